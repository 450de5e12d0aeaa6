// A 224x224 batch handed to a network declared for 227x227 images.
use alexnet::runtime::{Batch, Cpu};

alexnet::network! {
    pub Net<3, 227, 227> {
        conv(96, 11, stride = 4) relu maxpool(3, stride = 2) fc(10)
    }
}

fn main() {
    let net = Net::new(Cpu::new(), 0).unwrap();
    let x: Batch<3, 224, 224> = Batch::zeros(1);
    let _ = net.forward(&x);
}
