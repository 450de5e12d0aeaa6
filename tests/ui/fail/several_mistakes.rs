// Three independent mistakes, three errors; nothing else.
alexnet::network! {
    Net<3, 32, 32> {
        conv(16, 3, strid = 2) relu
        lrn(4)
        maxpool(3, stride = 2)
        dropout(2.0)
        fc(10) softmax
    }
}

fn main() {}
