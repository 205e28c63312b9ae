//! Repo ids resolve through the Hugging Face cache layout, offline; a repo
//! that is not cached fails with a clear error when the hub is off.

use sd_pipeline::{Request, StableDiffusion};
use sd_testkit::parity::reference_dir;

#[test]
fn cached_repo_ids_load_offline_and_missing_ones_fail_clearly() {
    let cache = std::env::temp_dir().join(format!("sd-hub-cache-{}", std::process::id()));
    let repo = cache.join("models--test--tiny-sd1");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    sd_testkit::scratch::copy_dir(
        &reference_dir().join("fixtures/tiny-sd1"),
        &repo.join("snapshots/0123abcd"),
    );

    let from_hub = StableDiffusion::builder()
        .hub_repo("test/tiny-sd1")
        .hub_cache(&cache)
        .offline(true)
        .build()
        .unwrap();
    let from_dir = StableDiffusion::builder()
        .model_dir(reference_dir().join("fixtures/tiny-sd1"))
        .build()
        .unwrap();
    let mut request = Request::new("a cat");
    request.steps = 2;
    assert_eq!(
        from_hub.generate(&request).unwrap().latents,
        from_dir.generate(&request).unwrap().latents
    );

    let err = StableDiffusion::builder()
        .hub_repo("test/absent")
        .hub_cache(&cache)
        .offline(true)
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("test/absent/model_index.json")
            && err.contains("not in the local Hugging Face cache"),
        "{err}"
    );
}
