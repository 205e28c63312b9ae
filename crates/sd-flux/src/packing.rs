//! FLUX's latent tokens: the 16-channel latent cut into 2x2 patches, each
//! patch one token of 64 values (diffusers' `FluxPipeline._pack_latents`
//! and `_unpack_latents`), and each token's position ids
//! (`_prepare_latent_image_ids`: `(0, row, column)` of the patch grid).

use tch::{Device, Kind, Tensor};

/// (batch, channels, h, w) latents (h, w even) as (batch, h/2 x w/2, 4 x
/// channels) tokens.
pub fn pack(latents: &Tensor) -> Tensor {
    let (b, c, h, w) = latents
        .size4()
        .expect("latents are (batch, channels, h, w)");
    latents
        .view([b, c, h / 2, 2, w / 2, 2])
        .permute([0, 2, 4, 1, 3, 5])
        .reshape([b, (h / 2) * (w / 2), c * 4])
}

/// The tokens of [`pack`] back to (batch, channels, h, w) latents.
pub fn unpack(tokens: &Tensor, h: i64, w: i64) -> Tensor {
    let (b, _, c) = tokens
        .size3()
        .expect("tokens are (batch, tokens, channels)");
    tokens
        .view([b, h / 2, w / 2, c / 4, 2, 2])
        .permute([0, 3, 1, 4, 2, 5])
        .reshape([b, c / 4, h, w])
}

/// The position ids of a `rows` x `cols` grid of tokens: (rows x cols, 3),
/// `(0, row, column)` in row-major order, f32.
pub fn image_ids(rows: i64, cols: i64, device: Device) -> Tensor {
    let options = (Kind::Float, device);
    let row = Tensor::arange(rows, options)
        .view([rows, 1])
        .expand([rows, cols], false);
    let col = Tensor::arange(cols, options)
        .view([1, cols])
        .expand([rows, cols], false);
    let zeros = Tensor::zeros([rows, cols], options);
    Tensor::stack(&[zeros, row, col], -1).reshape([rows * cols, 3])
}

/// The text tokens' position ids: `tokens` rows of zeros.
pub fn text_ids(tokens: i64, device: Device) -> Tensor {
    Tensor::zeros([tokens, 3], (Kind::Float, device))
}
