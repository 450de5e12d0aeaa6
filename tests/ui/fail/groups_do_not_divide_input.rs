alexnet::network! {
    Net<3, 32, 32> {
        conv(96, 5) relu
        conv(256, 5, groups = 5) relu
        fc(10)
    }
}

fn main() {}
