alexnet::network! {
    Net<3, 32, 32> split 3 {
        conv(18, 3) relu fc(12)
    }
}

fn main() {}
