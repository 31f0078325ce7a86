//! Realistic parameter layouts (tensor shapes) used by the examples, tests and benches:
//! the encoder pairs of the paper's audio-visual setting.

/// Parameter shapes of a torchvision-style ResNet-18 encoder (no classifier head) for
/// `in_ch` input channels, in `named_parameters()` order: conv weights, then BatchNorm
/// weight and bias. 11.17 M parameters for `in_ch = 3`.
pub fn resnet18(in_ch: usize) -> Vec<Vec<usize>> {
    let mut shapes = vec![vec![64, in_ch, 7, 7], vec![64], vec![64]];
    let mut inp = 64;
    for (stage, &ch) in [64usize, 128, 256, 512].iter().enumerate() {
        for block in 0..2 {
            let cin = if block == 0 { inp } else { ch };
            shapes.push(vec![ch, cin, 3, 3]);
            shapes.push(vec![ch]);
            shapes.push(vec![ch]);
            shapes.push(vec![ch, ch, 3, 3]);
            shapes.push(vec![ch]);
            shapes.push(vec![ch]);
            if block == 0 && stage > 0 {
                shapes.push(vec![ch, cin, 1, 1]);
                shapes.push(vec![ch]);
                shapes.push(vec![ch]);
            }
        }
        inp = ch;
    }
    shapes
}

/// The paper's audio-visual pair: a ResNet-18 on 1-channel spectrograms (audio) and one on
/// 3-channel frames (visual). Returns `(audio, visual)`.
pub fn resnet18_av_pair() -> (Vec<Vec<usize>>, Vec<Vec<usize>>) {
    (resnet18(1), resnet18(3))
}

/// Parameter shapes of a ViT-B/16 encoder (224×224 input, 197 tokens, no head) for
/// `in_ch` input channels: 85.8 M parameters for `in_ch = 3`.
pub fn vit_b16(in_ch: usize) -> Vec<Vec<usize>> {
    let d = 768;
    let mut shapes = vec![
        vec![d, in_ch, 16, 16],
        vec![d],
        vec![1, 1, d],
        vec![1, 197, d],
    ];
    for _ in 0..12 {
        shapes.extend([
            vec![d],
            vec![d],
            vec![3 * d, d],
            vec![3 * d],
            vec![d, d],
            vec![d],
            vec![d],
            vec![d],
            vec![4 * d, d],
            vec![4 * d],
            vec![d, 4 * d],
            vec![d],
        ]);
    }
    shapes.push(vec![d]);
    shapes.push(vec![d]);
    shapes
}

/// An audio-visual ViT-B/16 pair `(audio: 1 channel, visual: 3 channels)`.
pub fn vit_b16_av_pair() -> (Vec<Vec<usize>>, Vec<Vec<usize>>) {
    (vit_b16(1), vit_b16(3))
}

/// Total element count of a list of shapes.
pub fn numel(shapes: &[Vec<usize>]) -> usize {
    shapes.iter().map(|s| s.iter().product::<usize>()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_match_the_published_models() {
        // torchvision resnet18 has 11,689,512 parameters including fc (513,000) for 3 ch.
        assert_eq!(numel(&resnet18(3)), 11_689_512 - 513_000);
        assert_eq!(resnet18(3).len(), 60);
        // timm vit_base_patch16_224 has 86,567,656 including the 1000-class head (769,000).
        assert_eq!(numel(&vit_b16(3)), 86_567_656 - 769_000);
    }
}
