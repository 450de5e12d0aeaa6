alexnet::network! {
    Net<3, 32, 32> {
        conv(16, 3) tanh(2) fc(10)
    }
}

fn main() {}
