// Several networks in one invocation, private and public, with named layers and defaults.
use alexnet::runtime::{Batch, Cpu};

alexnet::network! {
    Tiny<1, 8, 8> { stem: conv(4, 3) relu head: fc(2) }
    pub(crate) Pooled<3, 16, 16> { conv(8, 3, pad = 1) relu avgpool(2) maxpool(3, stride = 1) lrn(3) fc(5) softmax }
}

fn main() -> alexnet::runtime::Result<()> {
    let tiny = Tiny::new(Cpu::new(), 1)?;
    let y: Batch<2, 1, 1> = tiny.forward(&Batch::<1, 8, 8>::zeros(3))?;
    assert_eq!(y.len(), 3);
    assert!(Tiny::plan().layer("stem").is_some());
    assert_eq!(Pooled::OUTPUT_SHAPE, [5, 1, 1]);
    Ok(())
}
