//! Prints a model's configuration and tensors: `cargo run -p taskpath-import --example inspect -- PATH`.
use taskpath_import::Checkpoint;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for path in std::env::args().skip(1) {
        let c = Checkpoint::open(&path)?;
        println!("{path}: {:?}\n{:#?}", c.kind(), c.config());
        for n in c.tensor_names() {
            let t = c.tensor(n)?;
            println!(
                "  {n:28} {:40} {:5} {:?}{}",
                t.source_name,
                t.dtype.name(),
                t.shape(),
                if t.is_borrowed() { "" } else { " (copied)" }
            );
        }
        match c.tokenizer() {
            Ok(t) => println!("tokenizer: {t:?} {:?}", t.encode("Hello world")?),
            Err(e) => println!("tokenizer: {e}"),
        }
    }
    Ok(())
}
