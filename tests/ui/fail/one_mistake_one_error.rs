// The network is used below; its mistake is the only error reported (a stub stands in).
use alexnet::runtime::{Batch, Cpu};

alexnet::network! {
    pub Net<3, 32, 32> {
        conv(16, 3) relu maxpool(64) fc(10)
    }
}

fn main() {
    let net = Net::new(Cpu::new(), 0).unwrap();
    let x: Batch<3, 32, 32> = Batch::zeros(1);
    let y: Batch<10, 1, 1> = net.forward(&x).unwrap();
    println!("{} {}", Net::summary(), y.len());
}
