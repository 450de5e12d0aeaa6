alexnet::network! {
    Net<3, 32, 32> {}
}

fn main() {}
