//! # alexnet
//!
//! AlexNet (Krizhevsky, Sutskever and Hinton, 2012) as a compile-time Rust DSL. Declare a
//! network with [`network!`]; the macro infers every layer's shape while your crate
//! compiles (a shape mistake is a compile error on the offending layer) and generates a
//! typed network whose batches carry their shapes. [`runtime`] runs it.
//!
//! ```
//! alexnet::network! {
//!     /// A small net for 32x32 colour images.
//!     pub Small<3, 32, 32> {
//!         conv(16, 5, pad = 2) relu maxpool(2, stride = 2) fc(10) softmax
//!     }
//! }
//!
//! # fn main() -> alexnet::runtime::Result<()> {
//! use alexnet::runtime::{Batch, Cpu};
//! assert_eq!(Small::PARAM_COUNT, 16 * 3 * 25 + 16 + 10 * 16 * 16 * 16 + 10);
//! let net = Small::new(Cpu::new(), 42)?;
//! let x: Batch<3, 32, 32> = Batch::zeros(2);
//! let y: Batch<10, 1, 1> = net.forward(&x)?;
//! assert_eq!(y.len(), 2);
//! # Ok(())
//! # }
//! ```

// Generated code names this crate `::alexnet`; this makes that path work inside it too.
extern crate self as alexnet;

pub use alexnet_codegen as codegen;
pub use alexnet_codegen::plan_from_str;
pub use alexnet_macros::network;
pub use alexnet_runtime as runtime;
pub use alexnet_runtime::ir;

pub mod nets;
