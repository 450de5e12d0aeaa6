// A shape error before the last fc layer: the stub's `forward` still returns the
// `Batch<10, 1, 1>` that fc(10) makes, so `y` needs no type annotation.
use alexnet::runtime::{Batch, Cpu};

alexnet::network! {
    pub Net<3, 32, 32> {
        conv(16, 3) relu maxpool(64) fc(10) softmax
    }
}

fn main() {
    let net = Net::new(Cpu::new(), 0).unwrap();
    let x: Batch<3, 32, 32> = Batch::zeros(1);
    let y = net.forward(&x).unwrap();
    println!("{}", y.len());
}
