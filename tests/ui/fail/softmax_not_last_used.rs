// A layer after softmax, in a network that `main` uses: the macro's error and nothing
// more from the stub that stands in for the network.
use alexnet::runtime::{Batch, Cpu};

alexnet::network! {
    pub Net<3, 8, 8> {
        fc(10) softmax fc(3)
    }
}

fn main() {
    let net = Net::new(Cpu::new(), 0).unwrap();
    let x: Batch<3, 8, 8> = Batch::zeros(1);
    let y = net.forward(&x).unwrap();
    println!("{} {}", Net::summary(), y.len());
}
