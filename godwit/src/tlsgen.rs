//! `godwit tls-gen`: make the TLS identities migrations authenticate with.
//!
//! `godwit tls-gen DIR` creates a new CA (`ca.pem`, `ca-key.pem`) and one
//! identity signed by it (`cert.pem`, `key.pem`). `godwit tls-gen DIR
//! --ca CADIR` makes another identity from an existing CA (a second host).
//! Source and destination each need an identity from the same CA.

use anyhow::{Context, Result};
use godwit_migration::transport::SERVER_NAME;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// Folder to write the identity into (created if missing).
    dir: PathBuf,
    /// Sign with the CA in this folder (`ca.pem` + `ca-key.pem`) instead of
    /// making a new CA.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// A name for this identity (the certificate's common name).
    #[arg(long, default_value = "godwit host")]
    name: String,
}

fn write(path: &Path, text: &str, private: bool) -> Result<()> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    if private {
        o.mode(0o600);
    }
    let mut f = o
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

pub fn run(args: Args) -> Result<i32> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let (ca_cert, ca_key, ca_pem) = match &args.ca {
        Some(dir) => {
            let read = |n: &str| {
                std::fs::read_to_string(dir.join(n))
                    .with_context(|| format!("cannot read {}", dir.join(n).display()))
            };
            let ca_pem = read("ca.pem")?;
            let key = KeyPair::from_pem(&read("ca-key.pem")?)
                .context("ca-key.pem is not a private key")?;
            // The same name and key as the CA: what we sign chains to ca.pem.
            let issuer = CertificateParams::from_ca_cert_pem(&ca_pem)
                .context("ca.pem is not a CA certificate")?
                .self_signed(&key)?;
            (issuer, key, ca_pem)
        }
        None => {
            let mut p = CertificateParams::new(Vec::<String>::new())?;
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            p.distinguished_name
                .push(DnType::CommonName, "Godwit migration CA");
            let key = KeyPair::generate()?;
            let cert = p.self_signed(&key)?;
            let pem = cert.pem();
            write(&args.dir.join("ca-key.pem"), &key.serialize_pem(), true)?;
            (cert, key, pem)
        }
    };
    let mut p = CertificateParams::new(vec![SERVER_NAME.to_string()])?;
    p.distinguished_name
        .push(DnType::CommonName, args.name.as_str());
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, &ca_cert, &ca_key)?;
    write(&args.dir.join("ca.pem"), &ca_pem, false)?;
    write(&args.dir.join("cert.pem"), &cert.pem(), false)?;
    write(&args.dir.join("key.pem"), &key.serialize_pem(), true)?;
    println!(
        "wrote {}/{{ca.pem,cert.pem,key.pem}}{}",
        args.dir.display(),
        if args.ca.is_none() {
            " and the new CA's key ca-key.pem (keep it off the hosts that migrate)"
        } else {
            ""
        }
    );
    Ok(0)
}
