//! Backbones by name and keyword arguments: the reference's class and factory names mapped
//! to the configurations ([`BackboneConfig::from_name`], and the `Deserialize` impl of
//! [`BackboneConfig`]).

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::{
    AlexNetConfig, BackboneConfig, DenseNetConfig, MlpConfig, ResNetConfig, ResNetTruncatedConfig,
};
use crate::{Error, Result};

/// How a name builds its configuration.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Mlp,
    ResNet,
    ResNetTruncated,
    DenseNet,
    AlexNet,
    /// A factory: fixed arguments (a ResNet or DenseNet preset), the rest as keywords.
    ResNetPreset(fn() -> ResNetConfig),
    ResNetTruncatedPreset(fn() -> ResNetConfig),
    DenseNetPreset(fn() -> DenseNetConfig),
}

/// Every accepted name: the canonical tags (what serialisation writes), the reference's class
/// names and its factories (plus `resnet34` and its truncated form, same rule).
const NAMES: [(&str, Kind); 17] = [
    ("mlp", Kind::Mlp),
    ("MLP", Kind::Mlp),
    ("resnet", Kind::ResNet),
    ("ResNet", Kind::ResNet),
    ("resnet_truncated", Kind::ResNetTruncated),
    ("ResNetTruncated", Kind::ResNetTruncated),
    ("densenet", Kind::DenseNet),
    ("DenseNet", Kind::DenseNet),
    ("alexnet", Kind::AlexNet),
    ("AlexNet", Kind::AlexNet),
    ("resnet18", Kind::ResNetPreset(ResNetConfig::resnet18)),
    ("resnet34", Kind::ResNetPreset(ResNetConfig::resnet34)),
    ("resnet50", Kind::ResNetPreset(ResNetConfig::resnet50)),
    (
        "resnet18_trunc",
        Kind::ResNetTruncatedPreset(ResNetConfig::resnet18),
    ),
    (
        "resnet34_trunc",
        Kind::ResNetTruncatedPreset(ResNetConfig::resnet34),
    ),
    (
        "resnet50_trunc",
        Kind::ResNetTruncatedPreset(ResNetConfig::resnet50),
    ),
    (
        "densenet121",
        Kind::DenseNetPreset(DenseNetConfig::densenet121),
    ),
];

/// Keyword arguments a preset fixes (passing them is an error, as in Python where the
/// factory already passes them).
const RESNET_FIXED: [&str; 2] = ["block", "layers"];
const DENSENET_FIXED: [&str; 3] = ["growth_rate", "block_config", "num_init_features"];

/// Alternative keyword names of [`AlexNetConfig`] besides its serialised field names.
const ALEXNET_ALIASES: [&str; 1] = ["n_channels"];

fn kwargs_err(name: &str, problem: impl std::fmt::Display) -> Error {
    Error::BackboneKwargs {
        name: name.to_string(),
        problem: problem.to_string(),
    }
}

/// Parses `kwargs` as a `T`, refusing keywords that `T` does not know, bar its `aliases` (the
/// reference raises `TypeError` on an unexpected keyword argument).
fn parse<T: Serialize + for<'de> Deserialize<'de>>(
    name: &str,
    kwargs: Map<String, Value>,
    aliases: &[&str],
) -> Result<T> {
    let keys: Vec<String> = kwargs.keys().cloned().collect();
    let config: T =
        serde_json::from_value(Value::Object(kwargs)).map_err(|e| kwargs_err(name, e))?;
    let known = serde_json::to_value(&config).map_err(|e| kwargs_err(name, e))?;
    let unknown: Vec<&String> = keys
        .iter()
        .filter(|k| known.get(k.as_str()).is_none() && !aliases.contains(&k.as_str()))
        .collect();
    if !unknown.is_empty() {
        return Err(kwargs_err(
            name,
            format!("unexpected keyword argument(s) {unknown:?}"),
        ));
    }
    Ok(config)
}

/// `preset`'s arguments with `kwargs` merged over them, refusing the `fixed` ones.
fn merge<T: Serialize>(
    name: &str,
    preset: &T,
    fixed: &[&str],
    kwargs: Map<String, Value>,
) -> Result<Map<String, Value>> {
    if let Some(k) = kwargs.keys().find(|k| fixed.contains(&k.as_str())) {
        return Err(kwargs_err(
            name,
            format!("`{k}` is fixed by the factory and cannot be given"),
        ));
    }
    let Value::Object(mut base) = serde_json::to_value(preset).map_err(|e| kwargs_err(name, e))?
    else {
        return Err(kwargs_err(name, "the preset is not a map of arguments"));
    };
    base.extend(kwargs);
    Ok(base)
}

impl BackboneConfig {
    /// Every name [`BackboneConfig::from_name`] accepts.
    pub fn names() -> impl Iterator<Item = &'static str> {
        NAMES.iter().map(|(n, _)| *n)
    }

    /// The configuration of the backbone called `name` with keyword arguments `kwargs`, as
    /// the reference's `encoder` + `encoder_kwargs`; unset arguments take the reference
    /// defaults.
    ///
    /// Names: the canonical tags `mlp`, `resnet`, `resnet_truncated`, `densenet`, `alexnet`
    /// (the arguments of [`MlpConfig`], [`ResNetConfig`], [`ResNetTruncatedConfig`],
    /// [`DenseNetConfig`], [`AlexNetConfig`]); the reference's class names `MLP`, `ResNet`,
    /// `ResNetTruncated`, `DenseNet`, `AlexNet` (the same); its factories `resnet18`,
    /// `resnet34`, `resnet50` (a [`ResNetConfig`] whose `block` and `layers` are fixed),
    /// `resnet18_trunc`, `resnet34_trunc`, `resnet50_trunc` (the same plus `depth`) and
    /// `densenet121` (a [`DenseNetConfig`] whose `growth_rate`, `block_config` and
    /// `num_init_features` are fixed).
    ///
    /// Errors: [`Error::UnknownBackbone`] naming an unknown `name`;
    /// [`Error::BackboneKwargs`] for an argument of the wrong type, a missing required one,
    /// an unexpected one, or one the factory fixes. The values themselves are checked by
    /// [`BackboneConfig::validate`].
    pub fn from_name(name: &str, kwargs: Map<String, Value>) -> Result<Self> {
        let Some((_, kind)) = NAMES.iter().find(|(n, _)| *n == name) else {
            return Err(Error::UnknownBackbone {
                name: name.to_string(),
                known: Self::names().collect::<Vec<_>>().join(", "),
            });
        };
        Ok(match *kind {
            Kind::Mlp => Self::Mlp(parse::<MlpConfig>(name, kwargs, &[])?),
            Kind::ResNet => Self::ResNet(parse(name, kwargs, &[])?),
            Kind::ResNetTruncated => Self::ResNetTruncated(parse(name, kwargs, &[])?),
            Kind::DenseNet => Self::DenseNet(parse(name, kwargs, &[])?),
            Kind::AlexNet => Self::AlexNet(parse::<AlexNetConfig>(name, kwargs, &ALEXNET_ALIASES)?),
            Kind::ResNetPreset(preset) => {
                let kw = merge(name, &preset(), &RESNET_FIXED, kwargs)?;
                Self::ResNet(parse(name, kw, &[])?)
            }
            Kind::ResNetTruncatedPreset(preset) => {
                let kw = merge(name, &preset(), &RESNET_FIXED, kwargs)?;
                Self::ResNetTruncated(parse::<ResNetTruncatedConfig>(name, kw, &[])?)
            }
            Kind::DenseNetPreset(preset) => {
                let kw = merge(name, &preset(), &DENSENET_FIXED, kwargs)?;
                Self::DenseNet(parse(name, kw, &[])?)
            }
        })
    }
}

impl<'de> Deserialize<'de> for BackboneConfig {
    /// A map with a `name` (any name of [`BackboneConfig::from_name`]) and the keyword
    /// arguments beside it.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let mut map = Map::<String, Value>::deserialize(deserializer)?;
        let name = match map.remove("name") {
            Some(Value::String(name)) => name,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "backbone `name` must be a string, got {other}"
                )));
            }
            None => return Err(D::Error::missing_field("name")),
        };
        Self::from_name(&name, map).map_err(D::Error::custom)
    }
}
