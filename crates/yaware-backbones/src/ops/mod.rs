//! The 3D ops candle lacks, as custom ops with hand-written backward passes: [`conv3d`],
//! 3D pooling and a fused 3D batch norm ([`BatchNorm3d`]), plus a fused [`linear`] layer (with
//! an optional ReLU) for the MLP encoder and the projection heads, and the residual
//! [`add_relu`] ending a ResNet block.

mod conv;
mod elem;
mod linear;
mod norm;
mod pool;
mod residual;

pub use conv::{Conv3dParams, conv3d};
pub use linear::linear;
pub use norm::BatchNorm3d;
pub use pool::{
    Pool3dParams, adaptive_avg_pool3d_1, adaptive_max_pool3d_1, avg_pool3d, avg_pool3d_with,
    max_pool3d, max_pool3d_with,
};
pub use residual::add_relu;
