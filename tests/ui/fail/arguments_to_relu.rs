alexnet::network! {
    Net<3, 32, 32> {
        conv(16, 3) relu(0.1) fc(10)
    }
}

fn main() {}
