alexnet::network! {
    Net<3, 0, 32> {
        conv(16, 3) relu fc(10)
    }
}

fn main() {}
