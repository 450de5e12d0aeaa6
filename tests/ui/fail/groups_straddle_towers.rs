// groups = 3 would put a group across the boundary between the two towers.
alexnet::network! {
    Net<3, 64, 64> split 2 {
        conv(96, 5) relu
        conv(96, 3, groups = 3) relu
        fc(10)
    }
}

fn main() {}
