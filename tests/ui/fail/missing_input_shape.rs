alexnet::network! {
    Net {
        conv(16, 3) relu fc(10)
    }
}

fn main() {}
