//! The PostgreSQL store: the same [`Store`] as the embedded SQLite one, for several gateway
//! nodes sharing one database. Blocking (the `postgres` crate), on the node's
//! [`storage::PgPool`], with its migrations (component `licences`) applied at start.

use std::sync::Arc;

use postgres::Statement;
use postgres::{Row, error::SqlState};
use storage::PgPool;
use storage::pg::off_runtime;

use crate::id::Uscc;
use crate::jws::JwsAlg;
use crate::licence::{ConsentRecord, LicenceRecord, LicenceStatus, SealRecord, ShowCodeRecord};
use crate::licence_id::LicenceId;
use crate::store::{
    HOLDER_ORDER, HolderOrder, LICENCE_SELECT, Store, StoreError, StoredSdJwt, one_renewed,
    renewal_reason,
};

type Result<T> = std::result::Result<T, StoreError>;

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        match e.code() {
            Some(c)
                if *c == SqlState::UNIQUE_VIOLATION || *c == SqlState::FOREIGN_KEY_VIOLATION =>
            {
                StoreError::Conflict(e.to_string())
            }
            // PostgreSQL text cannot hold NUL: a value with one is refused, not a failure of
            // the database.
            Some(c)
                if *c == SqlState::CHARACTER_NOT_IN_REPERTOIRE
                    || *c == SqlState::UNTRANSLATABLE_CHARACTER =>
            {
                StoreError::Conflict("the value holds a character PostgreSQL cannot store".into())
            }
            _ => StoreError::Database(e.to_string()),
        }
    }
}

/// The PostgreSQL store of seals, licences, status entries, consents, show-codes and secrets.
#[derive(Debug)]
pub struct PgStore {
    pool: Arc<PgPool>,
}

const SEAL_COLUMNS: &str = "id, owner, seal_type, name, alg, certificate_pem, encrypted_key, \
    picture_sha256, picture, created_at, not_after, revoked_at, revocation_reason, owner_name";

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn uscc(row: &Row, i: usize) -> Result<Uscc> {
    parsed(row, i, "USCC")
}

/// Column `i` parsed as a `T` (an identifier), a corrupt row when it is not one.
fn parsed<T: std::str::FromStr>(row: &Row, i: usize, what: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    let s: String = row.try_get(i)?;
    s.parse().map_err(|e| corrupt(what, e))
}

/// Like [`parsed`], for a column that may be NULL.
fn parsed_opt<T: std::str::FromStr>(row: &Row, i: usize, what: &str) -> Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    let s: Option<String> = row.try_get(i)?;
    s.map(|s| s.parse().map_err(|e| corrupt(what, e)))
        .transpose()
}

fn u32_of(row: &Row, i: usize) -> Result<u32> {
    let v: i64 = row.try_get(i)?;
    u32::try_from(v).map_err(|e| corrupt("u32", e))
}

fn seal_row(row: &Row) -> Result<SealRecord> {
    let alg: String = row.try_get(4)?;
    Ok(SealRecord {
        id: row.try_get(0)?,
        owner: uscc(row, 1)?,
        seal_type: row.try_get(2)?,
        name: row.try_get(3)?,
        alg: JwsAlg::from_name(&alg).ok_or_else(|| corrupt("alg", &alg))?,
        certificate_pem: row.try_get(5)?,
        encrypted_key: row.try_get(6)?,
        picture_sha256: row.try_get(7)?,
        picture: row.try_get(8)?,
        created_at: row.try_get(9)?,
        not_after: row.try_get(10)?,
        revoked_at: row.try_get(11)?,
        revocation_reason: row.try_get(12)?,
        owner_name: row.try_get(13)?,
    })
}

fn licence_row(row: &Row) -> Result<LicenceRecord> {
    let fields: String = row.try_get(6)?;
    let status: String = row.try_get(7)?;
    Ok(LicenceRecord {
        id: parsed(row, 0, "licence id")?,
        type_code: parsed(row, 1, "licence type")?,
        issuer: uscc(row, 2)?,
        holder: parsed(row, 3, "holder")?,
        seal_id: row.try_get(4)?,
        sd_jwt: row.try_get(5)?,
        fields: serde_json::from_str(&fields).map_err(|e| corrupt("fields", e))?,
        status: LicenceStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?,
        status_reason: row.try_get(8)?,
        status_list: u32_of(row, 9)?,
        status_index: u32_of(row, 10)?,
        issued_at: row.try_get(11)?,
        not_before: row.try_get(12)?,
        expires_at: row.try_get(13)?,
        replaces: parsed_opt(row, 14, "licence id")?,
        replaced_by: parsed_opt(row, 15, "licence id")?,
    })
}

/// The lock that serialises issuances for one holder and licence type (on every node).
const HOLDER_LOCK: &str = "SELECT pg_advisory_xact_lock(4242003, hashtext($1 || '/' || $2))";

/// Inserts a licence unless `$17` is given and its holder (`$4`) holds a valid or suspended one
/// of its type (`$2`) unexpired at `$17`; answers the id of the one held, if any. The SD-JWT's
/// JWS header (`$19`) goes to `jws_headers` under its SHA-256 (`$18`) unless it is there, and
/// the row keeps the rest (`$6`). Run after [`HOLDER_LOCK`], in a statement of its own (its
/// snapshot is then taken after the lock).
const INSERT_UNLESS_HELD: &str = "
WITH held AS (
    SELECT id FROM licences WHERE $17::bigint IS NOT NULL
        AND holder = $4::text AND type_code = $2::text
        AND status IN ('valid', 'suspended') AND expires_at > $17::bigint LIMIT 1
), header AS (
    INSERT INTO jws_headers (sha256, header) SELECT $18::bytea, $19::text
    WHERE $18::bytea IS NOT NULL AND NOT EXISTS (SELECT 1 FROM held)
    ON CONFLICT (sha256) DO NOTHING
), inserted AS (
    INSERT INTO licences (id, type_code, issuer, holder, seal_id, sd_jwt, fields, status,
        status_reason, status_list, status_index, issued_at, not_before, expires_at, replaces,
        replaced_by, header_sha256)
    SELECT $1::text, $2::text, $3::text, $4::text, $5::text, $6::text, $7::text, $8::text,
        $9::text, $10::bigint, $11::bigint, $12::bigint, $13::bigint, $14::bigint, $15::text,
        $16::text, $18::bytea
    WHERE NOT EXISTS (SELECT 1 FROM held)
)
SELECT id FROM held";

/// Inserts a licence in `tx` with `insert` (prepared [`INSERT_UNLESS_HELD`]), first refusing it
/// (with the licence held) when `held_at` is given and the holder holds one of its type.
/// Racing issuances for one holder and type are serialised by a transaction-scoped advisory
/// lock on the pair ([`HOLDER_LOCK`], prepared as `lock`), so the check holds across nodes.
fn insert_licence_in(
    tx: &mut postgres::Transaction<'_>,
    [lock, insert]: &[Statement; 2],
    l: &LicenceRecord,
    held_at: Option<i64>,
) -> Result<()> {
    if held_at.is_some() {
        tx.execute(lock, &[&l.holder.as_str(), &l.type_code.as_str()])?;
    }
    let fields =
        serde_json::to_string(&l.fields).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let stored = StoredSdJwt::split(&l.sd_jwt);
    let header = stored.header.as_ref().map(|(text, _)| *text);
    let held = tx.query_opt(
        insert,
        &[
            &l.id.as_str(),
            &l.type_code.as_str(),
            &l.issuer.as_str(),
            &l.holder.as_str(),
            &l.seal_id,
            &stored.rest,
            &fields,
            &l.status.as_str(),
            &l.status_reason,
            &i64::from(l.status_list),
            &i64::from(l.status_index),
            &l.issued_at,
            &l.not_before,
            &l.expires_at,
            &l.replaces.as_ref().map(LicenceId::as_str),
            &l.replaced_by.as_ref().map(LicenceId::as_str),
            &held_at,
            &stored.header_sha256(),
            &header,
        ],
    )?;
    match held {
        Some(row) => Err(StoreError::Held(row.try_get(0)?)),
        None => Ok(()),
    }
}

impl PgStore {
    /// The store on `pool`'s schema, its pending migrations applied.
    pub fn open(pool: Arc<PgPool>) -> Result<PgStore> {
        let migrations = crate::store::migrations("BYTEA", "BIGINT");
        let migrations: Vec<&str> = migrations.iter().map(String::as_str).collect();
        off_runtime(|| pool.migrate(crate::store::MIGRATION_COMPONENT, &migrations))?;
        Ok(PgStore { pool })
    }

    /// The schema the store lives in.
    pub fn schema(&self) -> &str {
        self.pool.schema()
    }
}

impl Store for PgStore {
    fn put_secret_once(&self, name: &str, blob: &[u8]) -> Result<Vec<u8>> {
        self.pool.with(|c| {
            c.execute(
                "INSERT INTO secrets (name, blob) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                &[&name, &blob],
            )?;
            Ok(
                c.query_one("SELECT blob FROM secrets WHERE name = $1", &[&name])?
                    .try_get(0)?,
            )
        })
    }

    fn secret(&self, name: &str) -> Result<Option<Vec<u8>>> {
        if name.contains('\0') {
            return Ok(None); // no stored key holds NUL
        }
        self.pool.with(|c| {
            Ok(
                c.query_opt("SELECT blob FROM secrets WHERE name = $1", &[&name])?
                    .map(|r| r.try_get(0))
                    .transpose()?,
            )
        })
    }

    fn insert_seal(&self, s: &SealRecord) -> Result<()> {
        self.pool.with(|c| {
            c.execute(
                &format!(
                    "INSERT INTO seals ({SEAL_COLUMNS}) VALUES
                     ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
                ),
                &[
                    &s.id,
                    &s.owner.as_str(),
                    &s.seal_type,
                    &s.name,
                    &s.alg.name(),
                    &s.certificate_pem,
                    &s.encrypted_key,
                    &s.picture_sha256,
                    &s.picture,
                    &s.created_at,
                    &s.not_after,
                    &s.revoked_at,
                    &s.revocation_reason,
                    &s.owner_name,
                ],
            )?;
            Ok(())
        })
    }

    fn seal(&self, id: &str) -> Result<Option<SealRecord>> {
        if id.contains('\0') {
            return Ok(None); // no stored key holds NUL
        }
        self.pool.with(|c| {
            c.query_opt(
                &format!("SELECT {SEAL_COLUMNS} FROM seals WHERE id = $1"),
                &[&id],
            )?
            .map(|r| seal_row(&r))
            .transpose()
        })
    }

    fn seals(
        &self,
        owner: &Uscc,
        after: Option<(i64, &str)>,
        limit: u32,
    ) -> Result<Vec<SealRecord>> {
        let (t, id) = after.unwrap_or((i64::MAX, ""));
        if id.contains('\0') {
            return Ok(Vec::new());
        }
        self.pool.with(|c| {
            c.query(
                &format!(
                    "SELECT {SEAL_COLUMNS} FROM seals WHERE owner = $1 AND (created_at, id) < ($2, $3)
                     ORDER BY created_at DESC, id DESC LIMIT $4"
                ),
                &[&owner.as_str(), &t, &id, &i64::from(limit)],
            )?
            .iter()
            .map(seal_row)
            .collect()
        })
    }

    fn insert_trusted_ca(&self, ca: &crate::licence::TrustedSealCa) -> Result<()> {
        self.pool.with(|c| {
            c.execute(
                "INSERT INTO trusted_seal_cas (id, name, region, certificate_pem, added_at, removed_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[&ca.id, &ca.name, &ca.region, &ca.certificate_pem, &ca.added_at, &ca.removed_at],
            )?;
            Ok(())
        })
    }

    fn remove_trusted_ca(&self, id: &str, at: i64) -> Result<bool> {
        self.pool.with(|c| {
            Ok(c.execute(
                "UPDATE trusted_seal_cas SET removed_at = $2 WHERE id = $1 AND removed_at IS NULL",
                &[&id, &at],
            )? == 1)
        })
    }

    fn trusted_cas(&self) -> Result<Vec<crate::licence::TrustedSealCa>> {
        self.pool.with(|c| {
            c.query(
                "SELECT id, name, region, certificate_pem, added_at, removed_at
                 FROM trusted_seal_cas ORDER BY added_at, id",
                &[],
            )?
            .iter()
            .map(|r| -> Result<_> {
                Ok(crate::licence::TrustedSealCa {
                    id: r.try_get(0)?,
                    name: r.try_get(1)?,
                    region: r.try_get(2)?,
                    certificate_pem: r.try_get(3)?,
                    added_at: r.try_get(4)?,
                    removed_at: r.try_get(5)?,
                })
            })
            .collect::<Result<_>>()
        })
    }

    fn revoke_seal(&self, id: &str, at: i64, reason: &str) -> Result<bool> {
        self.pool.with(|c| {
            Ok(c.execute(
                "UPDATE seals SET revoked_at = $2, revocation_reason = $3
                 WHERE id = $1 AND revoked_at IS NULL",
                &[&id, &at, &reason],
            )? == 1)
        })
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn insert_licence(&self, l: &LicenceRecord, held_at: Option<i64>) -> Result<()> {
        // Four round trips (begin, the holder's lock, the insert unless held, commit), each
        // statement prepared once per connection.
        // A refusal rolls back and keeps the connection (an error would close it).
        let refused =
            self.pool
                .with_statements([HOLDER_LOCK, INSERT_UNLESS_HELD], |c, statements| {
                    let mut tx = c.transaction()?;
                    match insert_licence_in(&mut tx, &statements, l, held_at) {
                        Err(StoreError::Held(id)) => {
                            tx.rollback()?;
                            Ok::<_, StoreError>(Some(id))
                        }
                        other => {
                            other?;
                            tx.commit()?;
                            Ok(None)
                        }
                    }
                })?;
        match refused {
            Some(id) => Err(StoreError::Held(id)),
            None => Ok(()),
        }
    }

    fn insert_renewal(&self, old: &str, new: &LicenceRecord, at: i64) -> Result<()> {
        self.pool
            .with_statements([HOLDER_LOCK, INSERT_UNLESS_HELD], |c, statements| {
                let mut tx = c.transaction()?;
                insert_licence_in(&mut tx, &statements, new, None)?;
                let n = tx.execute(
                    "UPDATE licences SET status = 'revoked', status_reason = $3, replaced_by = $2
                 WHERE id = $1 AND replaced_by IS NULL AND status = 'valid'",
                    &[&old, &new.id.as_str(), &renewal_reason(new, at)],
                )?;
                one_renewed(n, old)?;
                tx.commit()?;
                Ok(())
            })
    }

    fn licence(&self, id: &str) -> Result<Option<LicenceRecord>> {
        if id.contains('\0') {
            return Ok(None); // no stored key holds NUL
        }
        self.pool.with(|c| {
            c.query_opt(
                &format!("SELECT {LICENCE_SELECT} FROM licences WHERE id = $1"),
                &[&id],
            )?
            .map(|r| licence_row(&r))
            .transpose()
        })
    }

    fn licences_by_holder(
        &self,
        holder: &str,
        type_code: &str,
        issuer: Option<&Uscc>,
        after: Option<&HolderOrder>,
        limit: u32,
    ) -> Result<Vec<LicenceRecord>> {
        let issuer = issuer.map(Uscc::as_str);
        if holder.contains('\0')
            || type_code.contains('\0')
            || after.is_some_and(|a| a.id.contains('\0'))
        {
            return Ok(Vec::new());
        }
        self.pool.with(|c| {
            let mut out = Vec::new();
            for (rank, status) in HOLDER_ORDER.iter().enumerate() {
                let (t, id) = match after {
                    Some(a) if usize::from(a.rank) > rank => continue,
                    Some(a) if usize::from(a.rank) == rank => (a.issued_at, a.id.as_str()),
                    _ => (i64::MAX, ""),
                };
                let left = limit as usize - out.len();
                if left == 0 {
                    break;
                }
                for row in c.query(
                    &format!(
                        "SELECT {LICENCE_SELECT} FROM licences
                         WHERE holder = $1 AND type_code = $2 AND status = $3
                         AND (issued_at, id) < ($4, $5)
                         AND ($7::text IS NULL OR issuer = $7)
                         ORDER BY issued_at DESC, id DESC LIMIT $6"
                    ),
                    &[
                        &holder,
                        &type_code,
                        &status.as_str(),
                        &t,
                        &id,
                        &(left as i64),
                        &issuer,
                    ],
                )? {
                    out.push(licence_row(&row)?);
                }
            }
            Ok(out)
        })
    }

    fn set_status(
        &self,
        id: &str,
        from: LicenceStatus,
        to: LicenceStatus,
        reason: Option<&str>,
    ) -> Result<()> {
        self.pool.with(|c| {
            let n = c.execute(
                "UPDATE licences SET status = $3, status_reason = $4
                 WHERE id = $1 AND status = $2 AND replaced_by IS NULL",
                &[&id, &from.as_str(), &to.as_str(), &reason],
            )?;
            if n == 0 {
                let exists = c
                    .query_opt("SELECT 1 FROM licences WHERE id = $1", &[&id])?
                    .is_some();
                return Err(if exists {
                    StoreError::Conflict(format!("{id} changed meanwhile"))
                } else {
                    StoreError::NotFound(id.to_owned())
                });
            }
            Ok(())
        })
    }

    fn status_entries(&self, list: u32) -> Result<Vec<(u32, LicenceStatus)>> {
        self.pool.with(|c| {
            c.query(
                "SELECT status_index, status FROM licences WHERE status_list = $1",
                &[&i64::from(list)],
            )?
            .iter()
            .map(|r| {
                let status: String = r.try_get(1)?;
                Ok((
                    u32_of(r, 0)?,
                    LicenceStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?,
                ))
            })
            .collect()
        })
    }

    fn status_list_len(&self, list: u32) -> Result<u64> {
        self.pool.with(|c| {
            let n: i64 = c
                .query_one(
                    "SELECT COUNT(*) FROM licences WHERE status_list = $1",
                    &[&i64::from(list)],
                )?
                .try_get(0)?;
            Ok(n.max(0) as u64)
        })
    }

    fn insert_consent(&self, k: &ConsentRecord) -> Result<()> {
        let types = serde_json::to_string(&k.licence_types)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.pool.with(|c| {
            c.execute(
                "INSERT INTO consents (id, holder, department, licence_types, purpose, created_by,
                 expires_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &k.id,
                    &k.holder,
                    &k.department.as_str(),
                    &types,
                    &k.purpose,
                    &k.created_by.as_str(),
                    &k.expires_at,
                    &k.revoked_at,
                ],
            )?;
            Ok(())
        })
    }

    fn consent(&self, id: &str) -> Result<Option<ConsentRecord>> {
        if id.contains('\0') {
            return Ok(None); // no stored key holds NUL
        }
        self.pool.with(|c| {
            c.query_opt(
                "SELECT id, holder, department, licence_types, purpose, created_by, expires_at,
                 revoked_at FROM consents WHERE id = $1",
                &[&id],
            )?
            .map(|r| {
                let types: String = r.try_get(3)?;
                Ok(ConsentRecord {
                    id: r.try_get(0)?,
                    holder: r.try_get(1)?,
                    department: uscc(&r, 2)?,
                    licence_types: serde_json::from_str(&types)
                        .map_err(|e| corrupt("licence_types", e))?,
                    purpose: r.try_get(4)?,
                    created_by: uscc(&r, 5)?,
                    expires_at: r.try_get(6)?,
                    revoked_at: r.try_get(7)?,
                })
            })
            .transpose()
        })
    }

    fn revoke_consent(&self, id: &str, at: i64) -> Result<bool> {
        self.pool.with(|c| {
            Ok(c.execute(
                "UPDATE consents SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                &[&id, &at],
            )? == 1)
        })
    }

    fn purge_show_codes(&self, expired_before: i64) -> Result<u64> {
        self.pool.with(|c| {
            Ok(c.execute(
                "DELETE FROM show_codes WHERE expires_at < $1",
                &[&expired_before],
            )?)
        })
    }

    fn insert_show_code(&self, s: &ShowCodeRecord) -> Result<()> {
        self.pool.with(|c| {
            c.execute(
                "INSERT INTO show_codes (code_sha256, licence_id, created_by, expires_at)
                 VALUES ($1, $2, $3, $4)",
                &[
                    &s.code_sha256,
                    &s.licence_id,
                    &s.created_by.as_str(),
                    &s.expires_at,
                ],
            )?;
            Ok(())
        })
    }

    fn redeem_show_code(
        &self,
        code_sha256: &str,
        by: &Uscc,
        now: i64,
    ) -> Result<Option<ShowCodeRecord>> {
        if code_sha256.contains('\0') {
            return Ok(None);
        }
        self.pool.with(|c| {
            c.query_opt(
                "UPDATE show_codes SET redeemed_at = $3, redeemed_by = $2
                 WHERE code_sha256 = $1 AND redeemed_at IS NULL AND expires_at > $3
                 RETURNING code_sha256, licence_id, created_by, expires_at, redeemed_at, redeemed_by",
                &[&code_sha256, &by.as_str(), &now],
            )?
            .map(|r| show_code_row(&r))
            .transpose()
        })
    }

    fn show_code(&self, code_sha256: &str) -> Result<Option<ShowCodeRecord>> {
        if code_sha256.contains('\0') {
            return Ok(None);
        }
        self.pool.with(|c| {
            c.query_opt(
                "SELECT code_sha256, licence_id, created_by, expires_at, redeemed_at, redeemed_by
                 FROM show_codes WHERE code_sha256 = $1",
                &[&code_sha256],
            )?
            .map(|r| show_code_row(&r))
            .transpose()
        })
    }
}

fn show_code_row(r: &Row) -> Result<ShowCodeRecord> {
    let redeemed_by: Option<String> = r.try_get(5)?;
    Ok(ShowCodeRecord {
        code_sha256: r.try_get(0)?,
        licence_id: r.try_get(1)?,
        created_by: uscc(r, 2)?,
        expires_at: r.try_get(3)?,
        redeemed_at: r.try_get(4)?,
        redeemed_by: redeemed_by
            .map(|s| s.parse().map_err(|e| corrupt("USCC", e)))
            .transpose()?,
    })
}

/// For tests: a store in a fresh schema of the database named by `CERTGATE_TEST_POSTGRES_URL`,
/// dropped with the guard; `Ok(None)` (with a line on standard error saying the test was
/// skipped) when the variable is not set.
pub fn test_store(test: &str) -> Result<Option<(Arc<PgStore>, storage::SchemaGuard)>> {
    let Some((pool, guard)) = storage::pg::test_pool(test)? else {
        return Ok(None);
    };
    Ok(Some((Arc::new(PgStore::open(pool)?), guard)))
}

/// The guard of a test schema.
pub use storage::SchemaGuard;
