alexnet::network! {
    Net<3, 32, 32> {
        conv(16, 3) relu fc(128) relu
        conv(16, 3)
    }
}

fn main() {}
