//! `sharc passes`: list every registered pass with its options.

use sharc::Error;
use sharc::passes::Registry;

/// Arguments of `sharc passes`.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_: Args) -> Result<(), Error> {
    let mut registry = Registry::with_standard_passes();
    sharc::passes::sharing::register_sharing(&mut registry);
    println!("Passes (use them in `sharc opt -p \"a,b{{option=value}}\"`):\n");
    print!("{}", registry.describe());
    Ok(())
}
