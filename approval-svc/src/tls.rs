//! TLS on the gRPC port: the stack's own certificate authority, or
//! certificates an operator gives.
//!
//! `zt-approval init` creates the stack's CA: its key in the service's
//! private directory (`approval/tls-ca.key`, `0600`), its certificate at
//! `DIR/tls-ca.pem` (public, written once, as `trust.json` is), which the
//! broker and the console trust for the approval service and nothing else.
//! `serve --tls` then issues the service a short-lived server certificate
//! at every start, in memory, for `localhost`, the loopback addresses and the
//! names given with `--tls-name`. `--tls-cert`/`--tls-key` serve given
//! certificates instead (clients then trust the CA given with
//! `--approval-ca`).
//!
//! A service never listens in plaintext on an address other machines can
//! reach: [`check_plaintext`].

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use zt_proto::stack::{Layout, StackInfo};

/// How long a server certificate issued at start is valid.
const SERVER_CERT_DAYS: i64 = 30;

fn ca_key_path(layout: &Layout) -> std::path::PathBuf {
    layout.private("approval").join("tls-ca.key")
}

/// The CA's parameters, the same at every call for one stack: the issuer
/// name and key usages the server certificates it signs refer to.
fn ca_params(stack: &StackInfo) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "zt");
    name.push(
        DnType::CommonName,
        format!("zt stack CA {}", stack.stack_id),
    );
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(3650);
    Ok(params)
}

/// Creates the stack's CA if it has none. Idempotent: an existing CA key
/// is kept, and the public certificate is never replaced.
pub fn ensure_ca(layout: &Layout, stack: &StackInfo) -> anyhow::Result<()> {
    let key_path = ca_key_path(layout);
    let cert_path = layout.tls_ca_file();
    if key_path.exists() {
        if !cert_path.exists() {
            bail!(
                "{} exists but {} does not: restore it (clients pin it)",
                key_path.display(),
                cert_path.display()
            );
        }
        return Ok(());
    }
    // Checked before a key is written: a new key beside an old certificate
    // would look like a complete CA on the next start.
    if cert_path.exists() {
        bail!(
            "{} exists without its key: remove it to create a new CA",
            cert_path.display()
        );
    }
    let key = KeyPair::generate().context("generating the stack's TLS CA key")?;
    let cert = ca_params(stack)?
        .self_signed(&key)
        .context("signing the stack's TLS CA")?;
    zt_proto::keys::write_private(&key_path, &key.serialize_pem())?;
    let tmp = cert_path.with_extension("pem.new");
    std::fs::write(&tmp, cert.pem()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &cert_path)
        .with_context(|| format!("writing {}", cert_path.display()))?;
    Ok(())
}

/// A server certificate and key (PEM) for the gRPC port, signed by the
/// stack's CA, for `localhost`, `127.0.0.1`, `::1` and `names`.
pub fn server_identity(
    layout: &Layout,
    stack: &StackInfo,
    names: &[String],
) -> anyhow::Result<(String, String)> {
    let key_path = ca_key_path(layout);
    let ca_pem = std::fs::read_to_string(&key_path).with_context(|| {
        format!(
            "reading {} (run `zt-approval init`, which creates the stack's CA)",
            key_path.display()
        )
    })?;
    let ca_key =
        KeyPair::from_pem(&ca_pem).with_context(|| format!("{}: not a key", key_path.display()))?;
    let issuer = Issuer::new(ca_params(stack)?, ca_key);
    let mut sans: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    sans.extend(names.iter().cloned());
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    for name in &sans {
        params
            .subject_alt_names
            .push(match name.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    name.clone()
                        .try_into()
                        .with_context(|| format!("--tls-name {name}: not a DNS name"))?,
                ),
            });
    }
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "zt approval service");
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(SERVER_CERT_DAYS);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Reads given certificate and key files.
pub fn given_identity(cert: &Path, key: &Path) -> anyhow::Result<(String, String)> {
    let read =
        |p: &Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    Ok((read(cert)?, read(key)?))
}

/// Refuses plaintext gRPC on an address that is not loopback: operator,
/// launcher and service tokens and grants would cross the network in clear.
pub fn check_plaintext(listen: SocketAddr) -> anyhow::Result<()> {
    if !listen.ip().is_loopback() {
        bail!(
            "refusing plaintext gRPC on {listen}, which is not a loopback address: serve it with --tls (the stack's CA) or --tls-cert/--tls-key"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_without_its_key_is_refused_and_no_key_is_made() {
        let dir = std::env::temp_dir().join(zt_proto::random_id("zt-tls-ca-"));
        let layout = Layout::new(&dir);
        let stack = layout.stack_or_create().expect("stack");
        layout.create_private("approval").expect("private dir");
        std::fs::write(layout.tls_ca_file(), "an old certificate").expect("write");
        assert!(ensure_ca(&layout, &stack).is_err());
        assert!(
            !ca_key_path(&layout).exists(),
            "a key beside the old certificate"
        );
        std::fs::remove_file(layout.tls_ca_file()).expect("remove");
        ensure_ca(&layout, &stack).expect("a new CA");
        assert!(ca_key_path(&layout).exists() && layout.tls_ca_file().exists());
        server_identity(&layout, &stack, &["approval.internal".into()]).expect("issues");
        let _ = std::fs::remove_dir_all(dir);
    }
}
