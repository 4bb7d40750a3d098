//! The decode path behind the pixel budget, as the worker runs it: structure and budget first,
//! then OpenCV decodes at the reduction the models allow, then a model input tensor is built.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil::decode::{ChannelOrder, InputSpec, Layout, Resize};

/// Small, so that a fuzzed frame cannot make OpenCV allocate much.
const MAX_PIXELS: u64 = 4_000_000;

fuzz_target!(|data: &[u8]| {
    let Ok(info) = vigil::contract::jpeg::sniff(data) else {
        return;
    };
    if info.width as u64 * info.height as u64 > MAX_PIXELS {
        return;
    }
    let factor = vigil::decode::reduction_factor(info.width, info.height, 224, 224);
    let Ok(img) = vigil::decode::decode(data, factor) else {
        return;
    };
    let spec = InputSpec {
        name: "input".into(),
        width: 224,
        height: 224,
        layout: Layout::NCHW,
        channels: ChannelOrder::RGB,
        mean: [127.5; 3],
        std: [127.5; 3],
        resize: Resize::Letterbox,
    };
    let (mut scratch, mut tensor) = (Default::default(), Vec::new());
    if vigil::decode::preprocess(&img, &spec, &mut scratch, &mut tensor).is_ok() {
        assert_eq!(tensor.len(), 3 * 224 * 224);
    }
});
