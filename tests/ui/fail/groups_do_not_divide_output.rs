alexnet::network! {
    Net<4, 32, 32> {
        conv(10, 5, groups = 4)
        fc(10)
    }
}

fn main() {}
