//! CpuGenerator draws exactly what torch.Generator("cpu").manual_seed(1234)
//! draws in the harness (reference/harness_outputs.py, write_rng), in order.

use sd_core::parity::{read_tensors, reference_dir, take};
use sd_core::rng::CpuGenerator;

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
}
