//! The generated Markdown: the results table, and the section of a document
//! between [`BEGIN_MARKER`] and [`END_MARKER`] that holds it.
//!
//! Updating a document rewrites only that section and keeps the table rows of
//! benchmarks that were not run this time, so a filtered run adds to the table.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::Result;

/// The line that opens the generated section.
pub(crate) const BEGIN_MARKER: &str = "<!-- xtask-bench:begin -->";
/// The line that closes the generated section.
pub(crate) const END_MARKER: &str = "<!-- xtask-bench:end -->";
/// The start of a document created from scratch.
const TITLE: &str = "# Performance\n";
/// The table's header row.
const HEADER: [&str; 3] = ["benchmark", "median", "throughput"];

/// One row of the results table, as displayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row {
    /// Criterion's benchmark id.
    pub(crate) id: String,
    /// Median time per iteration, e.g. `1.23 µs`.
    pub(crate) median: String,
    /// Throughput, e.g. `4.56 Gelem/s`, or `-` when the benchmark declares none.
    pub(crate) throughput: String,
}

/// Renders `rows` as a Markdown table, in the given order.
pub(crate) fn render_table(rows: &[Row]) -> String {
    let mut table = format!("| {} |\n| --- | ---: | ---: |\n", HEADER.join(" | "));
    for row in rows {
        let cells = [&row.id, &row.median, &row.throughput].map(|cell| cell.replace('|', "\\|"));
        table.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    table
}

/// The rows of the tables in `text` (other lines, headers and separators are skipped).
pub(crate) fn parse_table(text: &str) -> Vec<Row> {
    text.lines()
        .filter_map(|line| {
            let [id, median, throughput] = <[String; 3]>::try_from(split_row(line.trim())?).ok()?;
            let is_header = [&id, &median, &throughput] == HEADER;
            let is_separator = [&id, &median, &throughput]
                .iter()
                .all(|cell| !cell.is_empty() && cell.chars().all(|c| matches!(c, '-' | ':')));
            (!is_header && !is_separator).then_some(Row {
                id,
                median,
                throughput,
            })
        })
        .collect()
}

/// Splits a table line `| a | b \| c |` into its trimmed cells (`a`, `b | c`).
fn split_row(line: &str) -> Option<Vec<String>> {
    let inner = line.strip_prefix('|')?.strip_suffix('|')?;
    if inner.ends_with('\\') {
        return None; // The closing pipe is escaped: not a table row.
    }
    let mut cells = vec![String::new()];
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        let cell = cells.last_mut()?;
        match (c, chars.clone().next()) {
            ('\\', Some('|')) => {
                cell.push('|');
                chars.next();
            }
            ('|', _) => cells.push(String::new()),
            _ => cell.push(c),
        }
    }
    Some(cells.iter().map(|cell| cell.trim().to_owned()).collect())
}

/// Merges `new` rows into `old` ones: a new row replaces the old row with its
/// id, other old rows are kept. The result is sorted by id.
pub(crate) fn merge_rows(old: Vec<Row>, new: Vec<Row>) -> Vec<Row> {
    let mut by_id = BTreeMap::new();
    for row in old.into_iter().chain(new) {
        by_id.insert(row.id.clone(), row);
    }
    by_id.into_values().collect()
}

/// Returns `document` (or a new one with a title when it is `None` or blank)
/// with the generated section set to `preamble` followed by the table of `rows`
/// merged into the rows already in the section.
pub(crate) fn update_document(
    document: Option<&str>,
    preamble: &str,
    rows: Vec<Row>,
) -> Result<String> {
    let document = document.filter(|text| !text.trim().is_empty());
    let (old_rows, section) = match document {
        Some(text) => match section_range(text)? {
            Some(range) => (parse_table(&text[range.clone()]), Some(range)),
            None => (Vec::new(), None),
        },
        None => (Vec::new(), None),
    };
    let body = format!(
        "\n{preamble}\n{}\n",
        render_table(&merge_rows(old_rows, rows))
    );
    Ok(match (document, section) {
        (Some(text), Some(range)) => {
            format!("{}{body}{}", &text[..range.start], &text[range.end..])
        }
        (Some(text), None) => {
            let separator = if text.ends_with('\n') { "\n" } else { "\n\n" };
            format!("{text}{separator}{BEGIN_MARKER}\n{body}{END_MARKER}\n")
        }
        (None, _) => format!("{TITLE}\n{BEGIN_MARKER}\n{body}{END_MARKER}\n"),
    })
}

/// The byte range between the begin marker's line and the end marker's line,
/// `None` when the document has no markers.
fn section_range(document: &str) -> Result<Option<Range<usize>>> {
    let mut offset = 0;
    let mut start = None;
    for line in document.split_inclusive('\n') {
        let marker = line.trim();
        if marker == BEGIN_MARKER && start.is_none() {
            start = Some(offset + line.len());
        } else if marker == END_MARKER {
            return match start {
                Some(start) => Ok(Some(start..offset)),
                None => Err(format!("`{END_MARKER}` comes before `{BEGIN_MARKER}`")),
            };
        }
        offset += line.len();
    }
    match start {
        Some(_) => Err(format!("`{BEGIN_MARKER}` has no matching `{END_MARKER}`")),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, median: &str) -> Row {
        Row {
            id: id.to_owned(),
            median: median.to_owned(),
            throughput: "-".to_owned(),
        }
    }

    #[test]
    fn table_round_trips() {
        let rows = vec![
            row("losses/infonce/256", "1.23 µs"),
            Row {
                id: "odd|id".to_owned(),
                median: "4.56 ms".to_owned(),
                throughput: "7.89 Gelem/s".to_owned(),
            },
        ];
        let table = render_table(&rows);
        assert!(table.starts_with("| benchmark | median | throughput |\n| --- | ---: | ---: |\n"));
        assert!(table.contains("| odd\\|id | 4.56 ms | 7.89 Gelem/s |\n"));
        assert_eq!(parse_table(&table), rows);
        assert_eq!(parse_table("text\n| a | b |\n- item\n"), vec![]);
    }

    #[test]
    fn merge_replaces_keeps_and_sorts() {
        let old = vec![row("b", "old"), row("a", "old")];
        let new = vec![row("c", "new"), row("b", "new")];
        assert_eq!(
            merge_rows(old, new),
            vec![row("a", "old"), row("b", "new"), row("c", "new")]
        );
    }

    #[test]
    fn creates_a_missing_document() {
        for document in [None, Some(""), Some("\n")] {
            let text = update_document(document, "Preamble.\n", vec![row("a", "1 ns")]).unwrap();
            assert_eq!(
                text,
                "# Performance\n\n<!-- xtask-bench:begin -->\n\nPreamble.\n\n\
                 | benchmark | median | throughput |\n| --- | ---: | ---: |\n| a | 1 ns | - |\n\n\
                 <!-- xtask-bench:end -->\n"
            );
        }
    }

    #[test]
    fn appends_markers_when_absent() {
        let text = update_document(Some("# Perf\n\nNotes."), "P.\n", vec![row("a", "1 ns")]);
        let text = text.unwrap();
        assert!(text.starts_with("# Perf\n\nNotes.\n\n<!-- xtask-bench:begin -->\n\nP.\n"));
        assert!(text.ends_with("| a | 1 ns | - |\n\n<!-- xtask-bench:end -->\n"));
        // Updating the result again finds the section instead of appending another.
        let again = update_document(Some(&text), "P.\n", vec![]).unwrap();
        assert_eq!(again, text);
    }

    #[test]
    fn replaces_the_section_only() {
        let before = "# Performance\n\nIntro.\n\n<!-- xtask-bench:begin -->\nOld preamble.\n\n\
                      | benchmark | median | throughput |\n|---|---|---|\n\
                      | kept | 5 ns | - |\n| rerun | 9 ns | - |\n\
                      <!-- xtask-bench:end -->\n\n## Notes\n\nHand-written.\n";
        let after = update_document(
            Some(before),
            "New preamble.\n",
            vec![row("rerun", "1 ns"), row("added", "2 ns")],
        )
        .unwrap();
        assert_eq!(
            after,
            "# Performance\n\nIntro.\n\n<!-- xtask-bench:begin -->\n\nNew preamble.\n\n\
             | benchmark | median | throughput |\n| --- | ---: | ---: |\n\
             | added | 2 ns | - |\n| kept | 5 ns | - |\n| rerun | 1 ns | - |\n\n\
             <!-- xtask-bench:end -->\n\n## Notes\n\nHand-written.\n"
        );
    }

    #[test]
    fn rejects_unbalanced_markers() {
        let only_begin = format!("x\n{BEGIN_MARKER}\n| a | 1 ns | - |\n");
        assert!(update_document(Some(&only_begin), "", vec![]).is_err());
        let reversed = format!("{END_MARKER}\n{BEGIN_MARKER}\n");
        assert!(update_document(Some(&reversed), "", vec![]).is_err());
    }
}
