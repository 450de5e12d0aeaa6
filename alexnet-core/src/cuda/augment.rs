//! The input kernel of a network trained or evaluated from a prepared data set: a batch of
//! 8-bit images in, the network's input batch out (crop, mirror, mean, colour shift,
//! scale in one pass: `kernels_templates/augment.cuh`). It depends on the network's input
//! shape and on the side of the stored images, not on a layer, so it is generated for a
//! `(input, side, patches per image)` rather than with a plan's kernels.

use crate::ir::Shape;
use crate::kernels::spec::{
    int, write, Access, ArgTy, Elem, Instance, KernelLaunch, KernelSpec, Len, Param, Role, Template,
};

/// Floats per draw in the kernel's `draws` buffer: top row, left column, mirrored (0 or
/// 1), the three channel shifts, two unused (32-byte aligned records).
pub const DRAW_FLOATS: usize = 8;

const fn float(name: &'static str) -> Param {
    Param {
        name,
        ty: ArgTy::Float,
    }
}

pub const AUGMENT_TEMPLATE: Template = Template {
    header: "augment.cuh",
    function: "augment",
    params: &[
        Param {
            name: "images",
            ty: ArgTy::Ptr(Elem::U8, Access::Read),
        },
        Param {
            name: "draws",
            ty: ArgTy::Ptr(Elem::F32, Access::Read),
        },
        Param {
            name: "mean",
            ty: ArgTy::Ptr(Elem::F32, Access::Read),
        },
        write("out"),
        float("units"),
        float("scale_r"),
        float("scale_g"),
        float("scale_b"),
        int("batch"),
    ],
};

/// The kernel that cuts `per_image` patches of the network input `input` (3 channels)
/// from each `side` x `side` image of a batch (`batch` counts images). An error when
/// the input is not RGB, does not fit in the image, or `per_image` is 0.
pub fn augment(input: Shape, side: usize, per_image: usize) -> Result<KernelSpec, String> {
    if input.c != 3 || input.h == 0 || input.w == 0 || input.h > side || input.w > side {
        return Err(format!(
            "an input of {input} cannot be cut from {side}x{side} RGB images"
        ));
    }
    if per_image == 0 {
        return Err("no patch per image".into());
    }
    let patch = (3 * input.h * input.w) as u64;
    let name = format!("augment_s{side}_c{}x{}_p{per_image}", input.h, input.w);
    Ok(Instance {
        role: Role::Augment,
        launch: KernelLaunch::elementwise(0, &name, per_image as u64 * patch),
        template: &AUGMENT_TEMPLATE,
        doc: format!(
            "{per_image} patch(es) of {input} per {side}x{side} image: crop, mirror, mean, colour shift, scale"
        ),
        consts: vec![
            ("SIDE", side.into()),
            ("CROP_H", input.h.into()),
            ("CROP_W", input.w.into()),
            ("PER_IMAGE", per_image.into()),
            ("DRAW", DRAW_FLOATS.into()),
        ],
        lens: vec![
            ("images", Len::PerImage((3 * side * side) as u64)),
            ("draws", Len::PerImage((per_image * DRAW_FLOATS) as u64)),
            ("mean", Len::Fixed((3 * side * side) as u64)),
            ("out", Len::PerImage(per_image as u64 * patch)),
        ],
        gemm: None,
    }
    .spec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_of_alexnet_s_input() {
        let k = augment(Shape::new(3, 227, 227), 256, 1).unwrap();
        assert_eq!(k.name(), "augment_s256_c227x227_p1");
        assert!(k.stub.contains("enum : int { SIDE = 256 };"), "{}", k.stub);
        assert!(
            k.stub.contains("const unsigned char* __restrict__ images"),
            "{}",
            k.stub
        );
        assert_eq!(
            k.launch.grid(2),
            [(2 * 3 * 227 * 227u32).div_ceil(256), 1, 1]
        );
        let ten = augment(Shape::new(3, 227, 227), 256, 10).unwrap();
        assert_eq!(ten.args[3].len, Some(Len::PerImage(10 * 3 * 227 * 227)));
        assert!(augment(Shape::new(3, 300, 300), 256, 1).is_err());
        assert!(augment(Shape::new(1, 28, 28), 32, 1).is_err());
        assert!(augment(Shape::new(3, 32, 32), 37, 0).is_err());
    }
}
