pub use alexnet_codegen::ir;
