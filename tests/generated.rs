//! The generated constants agree with the plan the macro embedded.

use alexnet::ir::Plan;
use alexnet::nets::{AlexNet, SmallNet, TorchvisionAlexNet};

fn agree(
    plan: &Plan,
    layers: &[alexnet::ir::LayerInfo],
    params: usize,
    macs: u64,
    input: [usize; 3],
    output: [usize; 3],
) {
    assert_eq!(layers.len(), plan.layers.len());
    for (row, l) in layers.iter().zip(plan.layers.iter()) {
        assert_eq!(row.name, l.name);
        assert_eq!(row.op, l.op.keyword());
        assert_eq!(row.output, l.output.to_array());
        assert_eq!(row.params, l.param_count());
        assert_eq!(row.macs, l.macs());
    }
    assert_eq!(params, plan.param_count());
    assert_eq!(macs, plan.macs());
    assert_eq!(input, plan.input.to_array());
    assert_eq!(output, plan.output().to_array());
}

#[test]
fn constants_match_the_plan() {
    agree(
        AlexNet::plan(),
        AlexNet::LAYERS,
        AlexNet::PARAM_COUNT,
        AlexNet::MACS_PER_IMAGE,
        AlexNet::INPUT_SHAPE,
        AlexNet::OUTPUT_SHAPE,
    );
    let t = TorchvisionAlexNet::plan();
    agree(
        t,
        TorchvisionAlexNet::LAYERS,
        TorchvisionAlexNet::PARAM_COUNT,
        TorchvisionAlexNet::MACS_PER_IMAGE,
        TorchvisionAlexNet::INPUT_SHAPE,
        TorchvisionAlexNet::OUTPUT_SHAPE,
    );
    agree(
        SmallNet::plan(),
        SmallNet::LAYERS,
        SmallNet::PARAM_COUNT,
        SmallNet::MACS_PER_IMAGE,
        SmallNet::INPUT_SHAPE,
        SmallNet::OUTPUT_SHAPE,
    );
    // torchvision's AlexNet has 61,100,840 parameters (torchvision.models.alexnet).
    assert_eq!(TorchvisionAlexNet::PARAM_COUNT, 61_100_840);
    assert_eq!(AlexNet::OUTPUT_SHAPE, [1000, 1, 1]);
}
