// The hyperbolic tangent: the layer kind added to show what a new kind takes (a file in
// alexnet-core/src/layers, one in alexnet-runtime/src/cpu, a template, its name in the
// registry). It is named, summarised and run like any other.
use alexnet::runtime::{Batch, Cpu};

alexnet::network! {
    Squashed<3, 8, 8> { conv(4, 3) tanh maxpool(2) fc(5) tanh }
}

fn main() -> alexnet::runtime::Result<()> {
    let net = Squashed::new(Cpu::new(), 7)?;
    let y: Batch<5, 1, 1> = net.forward(&Batch::<3, 8, 8>::zeros(2))?;
    assert!(y.as_tensor().data().iter().all(|v| v.abs() < 1.0));
    assert_eq!(Squashed::LAYERS[1].op, "tanh");
    assert_eq!(Squashed::plan().layers[1].name, "tanh1");
    assert!(Squashed::summary().contains("tanh"));
    assert!(Squashed::CUDA_SOURCE.contains("tanh_fwd<"));
    Ok(())
}
