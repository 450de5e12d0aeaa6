alexnet::network! {
    Net<3, 32, 32> {
        conv(16) relu fc(10)
    }
}

fn main() {}
