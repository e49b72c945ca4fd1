//! The scalar math of `kernels.cu` (the float reductions in the CPU's order,
//! the libm `expf`/`erfcf` ports, GELU) compiled by the host C compiler from
//! the very source NVRTC compiles, and compared bit for bit with what the
//! CPU path computes (taskpath-cpu, the libm crate). Skips, saying why, when
//! there is no C compiler.

use std::process::Command;

use taskpath_cpu::f32 as k;
use taskpath_cuda::kernels::SOURCE;

const SHIM: &str = r#"
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
typedef unsigned char u8; typedef signed char i8; typedef unsigned short u16;
typedef unsigned int u32; typedef unsigned long long u64;
#define __device__ static
#define __forceinline__ inline
static inline u32 __float_as_uint(float f) { u32 u; memcpy(&u, &f, 4); return u; }
static inline float __uint_as_float(u32 u) { float f; memcpy(&f, &u, 4); return f; }
#define NEG_INF (-INFINITY)
"#;

const MAIN: &str = r#"
static float rd(void) { u32 b; if (scanf("%x", &b) != 1) return 0; return __uint_as_float(b); }
int main(void) {
    char op;
    static float a[4096], b[4096];
    while (scanf(" %c", &op) == 1) {
        if (op == 'E') { float x = rd(); printf("%x %x\n", __float_as_uint(libm_expf(x)), __float_as_uint(gelu(x))); }
        else {
            int n; if (scanf("%d", &n) != 1) return 1;
            for (int i = 0; i < n; i++) a[i] = rd();
            for (int i = 0; i < n; i++) b[i] = rd();
            printf("%x %x %x\n", __float_as_uint(dot8(a, b, n) + 0.0f),
                   __float_as_uint(-sqrtf(sq_dist8(a, b, n))),
                   __float_as_uint(reduce8(a, n, false, 1.0f, 0.0f)));
        }
    }
    return 0;
}
"#;

fn helpers() -> &'static str {
    let start = SOURCE
        .find("// taskpath-cpu's reduce2 with f(x, y) = x y")
        .expect("helper section start");
    let end = SOURCE
        .find("// ---------------------------------------------------------------- dense f32")
        .expect("helper section end");
    &SOURCE[start..end]
}

fn lcg(s: &mut u64) -> f32 {
    *s = s
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (*s >> 40) as f32 / (1u64 << 24) as f32
}

#[test]
fn kernel_scalar_math_equals_the_cpu_bit_for_bit() {
    let dir = std::env::temp_dir().join(format!("taskpath-cuda-math-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (src, bin) = (dir.join("math.c"), dir.join("math"));
    std::fs::write(&src, format!("{SHIM}{}{MAIN}", helpers())).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    // No contraction and SSE floats: the C compiler must not be cleverer than NVRTC --fmad=false.
    let built = Command::new(&cc)
        .args(["-O2", "-std=c99", "-ffp-contract=off", "-fno-fast-math"])
        .arg(&src)
        .arg("-o")
        .arg(&bin)
        .arg("-lm")
        .output();
    let built = match built {
        Ok(o) => o,
        Err(e) => {
            eprintln!("skipping: no C compiler ({cc}: {e})");
            return;
        }
    };
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );

    let mut s = 1u64;
    let mut scalars: Vec<f32> = vec![
        0.0, -0.0, 1e-30, -1e-30, 0.5, -0.5, 88.0, 89.0, -87.0, -104.0, -110.0, 30.0, -30.0,
    ];
    scalars.extend((0..20000).map(|_| (lcg(&mut s) * 2.0 - 1.0) * 12.0));
    scalars.extend((0..2000).map(|_| (lcg(&mut s) * 2.0 - 1.0) * 0.01));
    let mut vecs: Vec<(Vec<f32>, Vec<f32>)> = Vec::new();
    for n in [1usize, 3, 7, 8, 9, 31, 32, 100, 128, 384] {
        for _ in 0..20 {
            let a = (0..n).map(|_| lcg(&mut s) * 4.0 - 2.0).collect();
            let b = (0..n).map(|_| lcg(&mut s) * 4.0 - 2.0).collect();
            vecs.push((a, b));
        }
    }
    let mut input = String::new();
    for x in &scalars {
        input += &format!("E {:x}\n", x.to_bits());
    }
    for (a, b) in &vecs {
        input += &format!("D {}", a.len());
        for v in a.iter().chain(b) {
            input += &format!(" {:x}", v.to_bits());
        }
        input += "\n";
    }
    // Through a file, not a pipe: the child's output would fill its pipe
    // while we still write its input.
    let input_path = dir.join("input.txt");
    std::fs::write(&input_path, input).unwrap();
    let out = Command::new(&bin)
        .stdin(std::fs::File::open(&input_path).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success());
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let bits = |l: &str| -> Vec<u32> {
        l.split_whitespace()
            .map(|h| u32::from_str_radix(h, 16).unwrap())
            .collect()
    };
    for &x in &scalars {
        let got = bits(lines.next().expect("a line per scalar"));
        let e = libm::expf(x);
        let mut g = [x];
        k::gelu(&mut g);
        assert_eq!(
            got,
            vec![e.to_bits(), g[0].to_bits()],
            "x = {x:e}: expf {e:e}, gelu {:e}",
            g[0]
        );
    }
    for (a, b) in &vecs {
        let got = bits(lines.next().expect("a line per vector pair"));
        let mut dot = [0f32];
        k::matvec(a, b, None, &mut dot);
        let mut lap = [0f32];
        k::laplace_logits(a, b, &mut lap);
        assert_eq!(got[0], dot[0].to_bits(), "dot n = {}", a.len());
        assert_eq!(got[1], lap[0].to_bits(), "laplace n = {}", a.len());
        // The sum itself is not exposed by taskpath-cpu: restate its
        // documented reduce1 order (eight lanes, lanes left to right, tail).
        let mean_c = f32::from_bits(got[2]) / a.len() as f32;
        let mean_cpu = {
            let full = a.len() / 8 * 8;
            let mut acc = [0f32; 8];
            for c in (0..full).step_by(8) {
                for (l, s) in acc.iter_mut().enumerate() {
                    *s += a[c + l];
                }
            }
            let tail: f32 = a[full..].iter().fold(0.0, |t, &v| t + v);
            (acc.iter().fold(0.0, |s, &v| s + v) + tail) / a.len() as f32
        };
        assert_eq!(mean_c.to_bits(), mean_cpu.to_bits(), "sum n = {}", a.len());
    }
}
