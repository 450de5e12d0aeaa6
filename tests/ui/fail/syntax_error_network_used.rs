// A syntax error in a network that `main` uses: the macro emits the error alone (no
// items), and rustc reports nothing more about the names that `main` uses.
use alexnet::runtime::{Batch, Cpu};

alexnet::network! {
    pub Net<3, 32, 32> {
        conv(16, 3), relu fc(10)
    }
}

fn main() {
    let net = Net::new(Cpu::new(), 0).unwrap();
    let x: Batch<3, 32, 32> = Batch::zeros(1);
    let y = net.forward(&x).unwrap();
    println!("{} {}", Net::summary(), y.len());
}
