alexnet::network! {
    Net<3, 32, 32> {
        features: conv(16, 3) relu
        features: conv(16, 3) relu
        fc(10)
    }
}

fn main() {}
