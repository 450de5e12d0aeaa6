// The paper's network declares, plans and exposes its shapes as constants.
alexnet::network! {
    /// Krizhevsky, Sutskever, Hinton 2012.
    pub AlexNet<3, 227, 227> split 2 {
        conv1: conv(96, 11, stride = 4) relu lrn(5, alpha = 1e-4, beta = 0.75, k = 2.0) maxpool(3, stride = 2)
        conv2: conv(256, 5, pad = 2, groups = 2) relu lrn(5) maxpool(3, stride = 2)
        conv(384, 3, pad = 1) relu conv(384, 3, pad = 1, groups = 2) relu
        conv(256, 3, pad = 1, groups = 2) relu maxpool(3, stride = 2)
        dropout(0.5) fc(4096) relu dropout(0.5) fc(4096) relu fc(1000) softmax
    }
}

const _: () = assert!(AlexNet::PARAM_COUNT == 60_965_224);
const _: () = assert!(AlexNet::OUTPUT_SHAPE[0] == 1000);

fn main() {
    assert_eq!(AlexNet::INPUT_SHAPE, [3, 227, 227]);
    assert!(AlexNet::summary().contains("60,965,224"));
}

// The layer table is usable in constant contexts.
const _: () = assert!(AlexNet::LAYERS.len() == 23);
const _: () = assert!(AlexNet::LAYERS[0].output[0] == 96 && AlexNet::LAYERS[0].output[1] == 55);
const _: () = assert!(AlexNet::LAYERS[16].params == 37_752_832);
