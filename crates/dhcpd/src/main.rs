//! `anyboot-dhcpd`: clap glue around the `anyboot_dhcpd` library.

use anyboot_cli::CommonArgs;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.common.check_config {
        anyboot_cli::finish_check(args.common.load_site().map(|_| "ok".to_owned()));
    }
    args.common.init_logging();
    Ok(())
}
