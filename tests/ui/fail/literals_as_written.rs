// Every message quotes its value as written: the sign, the suffix, the exponent.
alexnet::network! {
    Net<3, 32, 32> {
        conv(16, 3, pad = -1) relu
        maxpool(2f32)
        lrn(5, alpha = 1e39)
        dropout(5u8)
        fc(10)
    }
}

fn main() {}
