//! CpuGenerator draws exactly what torch.Generator("cpu").manual_seed(1234)
//! draws in the harness (reference/harness_outputs.py, write_rng), in order.

use sd_core::rng::CpuGenerator;
use sd_testkit::parity::{read_tensors, reference_dir, take};
use tch::Kind;

#[test]
fn sequential_draws_match_torch_bit_for_bit() {
    let reference = read_tensors(reference_dir().join("fixtures/outputs/rng.safetensors")).unwrap();
    let mut generator = CpuGenerator::new(1234).unwrap();
    let shapes: [&[i64]; 5] = [&[1, 4, 8, 8], &[3], &[5], &[2, 17], &[1, 4, 64, 64]];
    for (i, shape) in shapes.iter().enumerate() {
        let expected = take(&reference, &format!("randn.{i}")).unwrap();
        assert_eq!(
            generator.randn(shape).unwrap(),
            expected,
            "draw {i} of shape {shape:?}"
        );
    }
    assert_eq!(
        generator.rand(&[2, 9]).unwrap(),
        take(&reference, "rand.5").unwrap()
    );
    assert_eq!(
        generator.randn(&[4]).unwrap(),
        take(&reference, "randn.6").unwrap()
    );
    // Half-precision draws: torch's own f16/bf16 transform, same stream.
    let halves: [(&str, &[i64], Kind); 3] = [
        ("randn_f16.7", &[1, 4, 8, 8], Kind::Half),
        ("randn_bf16.8", &[2, 17], Kind::BFloat16),
        ("randn_f16.9", &[3], Kind::Half),
    ];
    for (key, shape, kind) in halves {
        let drawn = generator.randn_as(shape, kind).unwrap();
        assert_eq!(drawn.kind(), kind, "{key}");
        assert_eq!(drawn, take(&reference, key).unwrap(), "{key}");
    }
    assert_eq!(
        generator.randn(&[5]).unwrap(),
        take(&reference, "randn.10").unwrap()
    );
    // Not a cast of the f32 draw.
    let f32_cast = CpuGenerator::new(7).unwrap().randn(&[64]).unwrap();
    let f16 = CpuGenerator::new(7)
        .unwrap()
        .randn_as(&[64], Kind::Half)
        .unwrap();
    assert_ne!(f32_cast.to_kind(Kind::Half), f16);
    assert!(CpuGenerator::new(7)
        .unwrap()
        .randn_as(&[2], Kind::Int64)
        .is_err());
}
