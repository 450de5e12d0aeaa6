alexnet::network! {
    Net<3, 32, 32> {
        conv(16, 3) tahn fc(10)
    }
}

fn main() {}
