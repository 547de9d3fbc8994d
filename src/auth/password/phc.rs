//! argon2id and the PHC strings hashes are stored as: computing a hash in a reusable buffer,
//! recomputing a stored one with its own parameters, reading parameters back.

use argon2::{
    Algorithm, Argon2, Block, Params, PasswordHash, Version,
    password_hash::{Output, ParamsString, SaltString},
};

use super::internal;
use crate::auth::AuthError;

/// Length of a new hash's output, in bytes.
pub(super) const OUTPUT_LEN: usize = 32;
/// Length of a new hash's salt, in bytes.
pub(super) const SALT_LEN: usize = 16;

/// argon2 of `password` and `salt` under `params` into `output`, in `memory`, which is wiped
/// afterwards.
fn argon2id_with(
    algorithm: Algorithm,
    version: Version,
    params: &Params,
    password: &[u8],
    salt: &[u8],
    output: &mut [u8],
    memory: &mut Vec<Block>,
) -> Result<(), AuthError> {
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    let result = Argon2::new(algorithm, version, params.clone())
        .hash_password_into_with_memory(password, salt, output, &mut memory[..blocks])
        .map_err(internal);
    memory[..blocks].fill(Block::default());
    result
}

/// The PHC string of a new hash of `password` under `params` (argon2id v19, a random salt).
pub(super) fn new_phc(
    params: &Params,
    password: &[u8],
    memory: &mut Vec<Block>,
) -> Result<String, AuthError> {
    let salt = random::<SALT_LEN>()?;
    let mut output = [0u8; OUTPUT_LEN];
    argon2id_with(
        Algorithm::Argon2id,
        Version::V0x13,
        params,
        password,
        &salt,
        &mut output,
        memory,
    )?;
    phc_string(params, &salt, &output)
}

/// Recomputes a stored hash with its own algorithm, version and parameters; also says whether
/// those are the `configured` ones.
pub(super) fn verify_phc(
    phc: &str,
    password: &[u8],
    configured: &Params,
    memory: &mut Vec<Block>,
) -> Result<(bool, bool), AuthError> {
    let parsed = PasswordHash::new(phc).map_err(internal)?;
    let algorithm = Algorithm::try_from(parsed.algorithm).map_err(internal)?;
    let version = parsed
        .version
        .map(Version::try_from)
        .transpose()
        .map_err(internal)?
        .unwrap_or_default();
    let params = Params::try_from(&parsed).map_err(internal)?;
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return Err(internal("stored hash lacks a salt or an output"));
    };
    let mut salt_buffer = [0u8; 64];
    let salt = salt.decode_b64(&mut salt_buffer).map_err(internal)?;
    let mut output = vec![0u8; expected.len()];
    argon2id_with(
        algorithm,
        version,
        &params,
        password,
        salt,
        &mut output,
        memory,
    )?;
    let current = algorithm == Algorithm::Argon2id
        && version == Version::V0x13
        && (params.m_cost(), params.t_cost(), params.p_cost())
            == (
                configured.m_cost(),
                configured.t_cost(),
                configured.p_cost(),
            );
    // `Output`'s equality is constant-time.
    Ok((Output::new(&output).map_err(internal)? == expected, current))
}

/// The parameters of a PHC prefix (`$argon2id$v=19$m=19456,t=2,p=1`).
pub(super) fn params_of(prefix: &str) -> Option<Params> {
    // Without its own memory cost the parse below would fall back to the defaults.
    if !prefix.rsplit('$').next()?.contains("m=") {
        return None;
    }
    let salt = SaltString::encode_b64(&[0; SALT_LEN]).ok()?;
    let phc = format!("{prefix}${}", salt.as_str());
    let parsed = PasswordHash::new(&phc).ok()?;
    Params::try_from(&parsed).ok()
}

pub(super) fn phc_string(params: &Params, salt: &[u8], output: &[u8]) -> Result<String, AuthError> {
    let salt = SaltString::encode_b64(salt).map_err(internal)?;
    let hash = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(internal)?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(output).map_err(internal)?),
    };
    Ok(hash.to_string())
}

pub(super) fn random<const N: usize>() -> Result<[u8; N], AuthError> {
    let mut bytes = [0u8; N];
    getrandom::getrandom(&mut bytes).map_err(internal)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phc_prefix_gives_its_parameters() {
        let params = params_of("$argon2id$v=19$m=19456,t=2,p=1").unwrap();
        assert_eq!(
            (params.m_cost(), params.t_cost(), params.p_cost()),
            (19456, 2, 1)
        );
        assert!(params_of("$argon2id$v=19$garbage").is_none());
    }
}
