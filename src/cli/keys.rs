//! `hookyard keys generate`: an ed25519 key pair for Standard Webhooks `v1a` signatures.

use std::process::ExitCode;

use hookyard::verify::keys::PrivateKey;

#[derive(clap::Subcommand)]
pub enum KeysCommand {
    /// Print a new ed25519 signing key (`whsk_…`, for a destination's `sign.secret`) and its
    /// public key (`whpk_…`, for the receiver, e.g. a Hookyard source's `verify.secret`).
    Generate,
}

pub fn run(cmd: KeysCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KeysCommand::Generate => {
            let key = PrivateKey::generate_ed25519().map_err(|e| anyhow::anyhow!(e))?;
            println!("secret key (destinations.<name>.sign.secret; keep it private): {}", key.whsk().expect("ed25519"));
            println!("public key (give it to the receiver to verify v1a signatures): {}", key.public_secret());
            Ok(ExitCode::SUCCESS)
        }
    }
}
