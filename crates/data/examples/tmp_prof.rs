use std::time::Instant;
fn hpass(src: &[u8], scratch: &mut [f32], lo: &[u32], hi: &[u32], fr: &[f32]) {
    for (row, out_row) in src.chunks_exact(32).zip(scratch.chunks_exact_mut(28)) {
        for (((out, &l), &h), &f) in out_row.iter_mut().zip(lo).zip(hi).zip(fr) {
            let left = f32::from(row[l as usize]);
            let right = f32::from(row[h as usize]);
            *out = left + (right - left) * f;
        }
    }
}
fn vpass(scratch: &[f32], dst: &mut [f32], lo: &[u32], hi: &[u32], fr: &[f32]) {
    for (((out_row, &l), &h), &f) in dst.chunks_exact_mut(28).zip(lo).zip(hi).zip(fr) {
        let top = &scratch[l as usize * 28..(l as usize + 1) * 28];
        let bottom = &scratch[h as usize * 28..(h as usize + 1) * 28];
        for ((out, &t), &b) in out_row.iter_mut().zip(top).zip(bottom) {
            *out = (t + (b - t) * f) / 127.5 - 1.0;
        }
    }
}
fn main() {
    let r = data::resize::Resizer::new([32, 32], [28, 28]).unwrap();
    let src: Vec<u8> = (0..1024).map(|i| (i * 37 % 256) as u8).collect();
    let mut dst = vec![0f32; 784];
    let mut scratch = Vec::new();
    let n = 300_000;
    let t = Instant::now();
    for i in 0..n {
        r.resize_plane(std::hint::black_box(&src), &mut dst, i % 2 == 0, &mut scratch, |v| v / 127.5 - 1.0);
        std::hint::black_box(&dst);
    }
    println!("resize_plane: {:.1} ns/plane", t.elapsed().as_nanos() as f64 / n as f64);
    let scale = 32f32 / 28.0;
    let mut lo = vec![]; let mut hi = vec![]; let mut fr = vec![];
    for o in 0..28 { let s = (o as f32 + 0.5) * scale - 0.5; let f = s.floor(); lo.push(f.max(0.0) as u32); hi.push((s.ceil() as u32).min(31)); fr.push(s - f); }
    let mut sc = vec![0f32; 32 * 28];
    let t = Instant::now();
    for _ in 0..n { hpass(std::hint::black_box(&src), &mut sc, &lo, &hi, &fr); std::hint::black_box(&sc); }
    println!("hpass: {:.1} ns/plane", t.elapsed().as_nanos() as f64 / n as f64);
    let t = Instant::now();
    for _ in 0..n { vpass(std::hint::black_box(&sc), &mut dst, &lo, &hi, &fr); std::hint::black_box(&dst); }
    println!("vpass: {:.1} ns/plane", t.elapsed().as_nanos() as f64 / n as f64);
}
