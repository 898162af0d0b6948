//! Issuance: licences issued as SD-JWT VC, their lifecycle (suspend, resume, revoke, renew)
//! and the status lists that publish it.

use super::*;

/// The issuance part of a [`LicenceService`] (`svc.issuance()`).
#[derive(Debug, Clone, Copy)]
pub struct Issuance<'a> {
    pub(super) svc: &'a LicenceService,
}

/// How many times an issuance draws its status-list slot (and, when the gateway drew it, its
/// serial) before giving up: each draw is refused only when another licence took the slot
/// or identifier meanwhile.
pub const ISSUE_ATTEMPTS: usize = 32;

/// A licence signed and ready to be stored: what [`Issuance::prepare`] makes and
/// [`Issuance::settle`] completes once the store has answered.
#[derive(Debug)]
pub struct Prepared {
    record: LicenceRecord,
    held_at: Option<i64>,
    /// The serial was drawn here (neither asked for nor a renewal's): a taken identifier
    /// means drawing again, not a conflict.
    drawn: bool,
}

#[cfg(test)]
impl Prepared {
    /// A licence as prepared, to be stored again in a test.
    pub(crate) fn for_test(record: LicenceRecord, drawn: bool) -> Prepared {
        Prepared {
            record,
            held_at: None,
            drawn,
        }
    }
}

/// What a stored (or refused) [`Prepared`] licence comes to.
#[derive(Debug)]
pub enum Settled {
    /// Issued and stored.
    Issued(Box<LicenceRecord>),
    /// Its status-list slot (or drawn serial) was taken meanwhile: prepare it again.
    Again,
}

impl Issuance<'_> {
    /// Issues a licence: checks the issuer may issue the type and owns the seal, validates the
    /// holder and the fields, assigns the identifier and a status-list slot, signs, stores.
    pub fn issue(
        &self,
        issuer: &Uscc,
        req: &IssueRequest,
        now: i64,
    ) -> Result<LicenceRecord, ServiceError> {
        self.issue_inner(issuer, req, None, now)
    }

    /// [`Issuance::issue`] up to the store: the licence checked, identified and signed. Store
    /// it with [`Issuance::queue`] (or as `issue` does) and end with [`Issuance::settle`].
    pub fn prepare(
        &self,
        issuer: &Uscc,
        req: &IssueRequest,
        now: i64,
    ) -> Result<Prepared, ServiceError> {
        self.prepare_from_store(issuer, req, None, now)
    }

    /// [`Issuance::prepare`] without touching the store, so that it may run where blocking
    /// is not allowed: `None` when it would have to read the store (the seal is not in memory,
    /// the serial was asked for, the open status list is not known or is full, or the store
    /// is shared with other nodes); then call `prepare`.
    pub fn prepare_in_memory(
        &self,
        issuer: &Uscc,
        req: &IssueRequest,
        now: i64,
    ) -> Result<Option<Prepared>, ServiceError> {
        self.prepare_inner(issuer, req, None, now, true)
    }

    /// Whether [`Issuance::queue`] returns at once, the store inserting on a writer thread of
    /// its own; when not, it inserts before it returns, and is called where blocking is
    /// allowed.
    pub fn queues_inserts(&self) -> bool {
        self.svc.store.queues_inserts()
    }

    /// Stores a prepared licence (not a renewal) and calls `done` with it and the store's
    /// answer, for [`Issuance::settle`]; see [`Issuance::queues_inserts`].
    pub fn queue(
        &self,
        prepared: Prepared,
        done: impl FnOnce(Prepared, Result<(), StoreError>) + Send + 'static,
    ) {
        let (licence, held_at) = (prepared.record.clone(), prepared.held_at);
        self.svc.store.queue_licence(
            licence,
            held_at,
            Box::new(move |stored| done(prepared, stored)),
        );
    }

    /// The store's answer to a prepared licence: issued, drawn again, or refused. Reads the
    /// store only when a licence of the asked-for identifier may exist (a conflict on a
    /// serial that was not drawn).
    pub fn settle(
        &self,
        prepared: Prepared,
        stored: Result<(), StoreError>,
    ) -> Result<Settled, ServiceError> {
        let id = prepared.record.id.as_str();
        match stored {
            Ok(()) => {
                self.count_entry(prepared.record.status_list);
                Ok(Settled::Issued(Box::new(prepared.record)))
            }
            // Another licence took this status slot (or the drawn serial) meanwhile.
            Err(StoreError::Conflict(_))
                if prepared.drawn || self.svc.store.licence(id)?.is_none() =>
            {
                Ok(Settled::Again)
            }
            Err(StoreError::Conflict(_)) => Err(ServiceError::Conflict(format!(
                "licence {id} already exists"
            ))),
            Err(StoreError::Held(held)) => Err(ServiceError::AlreadyHeld(held)),
            Err(e) => Err(e.into()),
        }
    }

    fn issue_inner(
        &self,
        issuer: &Uscc,
        req: &IssueRequest,
        renews: Option<&LicenceRecord>,
        now: i64,
    ) -> Result<LicenceRecord, ServiceError> {
        for _ in 0..ISSUE_ATTEMPTS {
            let prepared = self.prepare_from_store(issuer, req, renews, now)?;
            let stored = match renews {
                Some(old) => self
                    .svc
                    .store
                    .insert_renewal(old.id.as_str(), &prepared.record, now),
                None => self
                    .svc
                    .store
                    .insert_licence(&prepared.record, prepared.held_at),
            };
            if let Settled::Issued(record) = self.settle(prepared, stored)? {
                return Ok(*record);
            }
        }
        Err(ServiceError::Internal(
            "no free status-list slot found".into(),
        ))
    }

    /// A licence (or a renewal's) prepared, reading the store as needed.
    fn prepare_from_store(
        &self,
        issuer: &Uscc,
        req: &IssueRequest,
        renews: Option<&LicenceRecord>,
        now: i64,
    ) -> Result<Prepared, ServiceError> {
        self.prepare_inner(issuer, req, renews, now, false)?
            .ok_or_else(|| ServiceError::Internal("a licence was prepared from memory only".into()))
    }

    /// See [`Issuance::prepare`] and [`Issuance::prepare_in_memory`] (`memory_only`).
    fn prepare_inner(
        &self,
        issuer: &Uscc,
        req: &IssueRequest,
        renews: Option<&LicenceRecord>,
        now: i64,
        memory_only: bool,
    ) -> Result<Option<Prepared>, ServiceError> {
        let licence_type = self.svc.types.get(&req.licence_type).ok_or_else(|| {
            invalid(
                "licence_type",
                format!("unknown licence type `{}`", req.licence_type),
            )
        })?;
        if !licence_type.issuers.contains(issuer) {
            return Err(ServiceError::Forbidden(format!(
                "department {issuer} may not issue {} ({})",
                licence_type.name, licence_type.code
            )));
        }
        let holder: HolderId = req.holder_id.parse().map_err(|e| invalid("holder_id", e))?;
        let holder_name =
            crate::text::name(&req.holder_name, 200).map_err(|e| invalid("holder_name", e))?;
        licence_type
            .validate_fields(&req.fields)
            .map_err(|e| invalid(&format!("fields.{}", e.field), e.reason))?;
        let seal = if memory_only {
            match self.svc.records.cached_seal(&req.seal_id) {
                Some(seal) => seal,
                None => return Ok(None),
            }
        } else {
            self.svc.seals().seal(&req.seal_id).map_err(|e| match e {
                ServiceError::NotFound(_) => invalid("seal_id", "no such seal"),
                other => other,
            })?
        };
        if &seal.owner != issuer {
            return Err(ServiceError::Forbidden(
                "the seal belongs to another department".into(),
            ));
        }
        if seal.revoked_at.is_some() {
            return Err(invalid("seal_id", "the seal is revoked"));
        }
        // Times are Unix seconds between 1970 and 9999: anything else is a client error, and the
        // bound keeps every later sum far from overflow.
        const LATEST: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
        let in_range = |field: &str, t: i64| {
            if (0..=LATEST).contains(&t) {
                Ok(t)
            } else {
                Err(invalid(field, "must be Unix seconds between 1970 and 9999"))
            }
        };
        let not_before = in_range("valid_from", req.valid_from.unwrap_or(now))?;
        let expires_at = match req.valid_until {
            Some(t) => in_range("valid_until", t)?,
            None => (not_before + i64::from(licence_type.validity_days) * 86400).min(LATEST),
        };
        if expires_at <= not_before {
            return Err(invalid("valid_until", "must be after valid_from"));
        }
        if expires_at <= now {
            return Err(invalid(
                "valid_until",
                "the validity has already ended: a licence is issued to be in force",
            ));
        }
        // The seal certificate is checked at issuance time (`iat`), so a licence may outlive
        // it, as a paper licence outlives the renewal of the stamp that sealed it.
        let (serial, version) = match renews {
            Some(old) => (old.id.serial().to_owned(), old.id.version() + 1),
            None => match &req.serial {
                Some(s) => (s.clone(), 1),
                None => (drawn_serial()?, 1),
            },
        };
        let type_code: TypeCode = licence_type.code.clone();
        let id = LicenceId::new(&type_code, issuer, &serial, version)
            .map_err(|e| invalid("serial", e))?;
        // A drawn serial that is taken (rare beyond measure) shows as a conflict when stored,
        // and is drawn again; an asked-for one is refused before signing.
        let drawn = renews.is_none() && req.serial.is_none();
        if !drawn && memory_only {
            return Ok(None);
        }
        if !drawn && self.svc.store.licence(id.as_str())?.is_some() {
            return Err(ServiceError::Conflict(format!(
                "licence {id} already exists"
            )));
        }

        let material = self.svc.material(&seal)?;
        let key = &material.signing;
        let x5c = material.x5c.clone();
        let header = JwsHeader {
            alg: seal.alg,
            typ: Some("dc+sd-jwt".into()),
            kid: Some(seal.id.clone()),
            x5c: Some(x5c),
        };
        let mut disclosable = req.fields.clone();
        disclosable.insert(
            "holder_id".into(),
            Value::String(holder.as_str().to_owned()),
        );
        disclosable.insert("holder_name".into(), Value::String(holder_name.to_owned()));

        let Some(list) = self.open_status_list(memory_only)? else {
            return Ok(None);
        };
        let index = random_index()?;
        let mut plain = Map::new();
        plain.insert("iss".into(), json!(format!("urn:certgate:dept:{issuer}")));
        plain.insert("jti".into(), json!(id.as_str()));
        plain.insert("vct".into(), json!(licence_type.code.as_str()));
        plain.insert("iat".into(), json!(now));
        plain.insert("nbf".into(), json!(not_before));
        plain.insert("exp".into(), json!(expires_at));
        plain.insert(
            "status".into(),
            json!({"status_list": {"idx": index, "uri": format!("{}/{list}", self.svc.status_uri_base)}}),
        );
        let issued = sdjwt::issue(header, plain, &disclosable, &mut sdjwt::OsSalts, key)
            .map_err(|e| ServiceError::Internal(format!("cannot sign: {e}")))?;
        let record = LicenceRecord {
            id,
            type_code: licence_type.code.clone(),
            issuer: issuer.clone(),
            holder,
            seal_id: seal.id.clone(),
            sd_jwt: issued.sd_jwt,
            fields: req.fields.clone(),
            status: LicenceStatus::Valid,
            status_reason: None,
            status_list: list,
            status_index: index,
            issued_at: now,
            not_before,
            expires_at,
            replaces: renews.map(|o| o.id.clone()),
            replaced_by: None,
        };
        Ok(Some(Prepared {
            record,
            held_at: licence_type.one_per_holder.then_some(now),
            drawn,
        }))
    }

    /// The list new licences go into: the lowest one not yet half full. With `memory_only`,
    /// `None` when finding it would read the store.
    fn open_status_list(&self, memory_only: bool) -> Result<Option<u32>, ServiceError> {
        let mut open = self
            .svc
            .open_list
            .lock()
            .map_err(|_| ServiceError::Internal("status list lock poisoned".into()))?;
        let count = |list| -> Result<Option<u64>, ServiceError> {
            if memory_only {
                Ok(None)
            } else {
                Ok(Some(self.svc.store.status_list_len(list)?))
            }
        };
        let (mut list, mut len) = match *open {
            // Other nodes fill the lists too: count again each time on a shared store.
            Some((list, _)) if self.svc.store.is_shared() => (list, count(list)?),
            Some((list, len)) => (list, Some(len)),
            None => (0, count(0)?),
        };
        loop {
            match len {
                None => return Ok(None),
                Some(n) if n < STATUS_LIST_FILL => {
                    *open = Some((list, n));
                    return Ok(Some(list));
                }
                Some(_) => {
                    list += 1;
                    len = count(list)?;
                }
            }
        }
    }

    /// Counts a licence entered in `list`.
    fn count_entry(&self, list: u32) {
        if let Ok(mut open) = self.svc.open_list.lock()
            && let Some((l, n)) = open.as_mut()
            && *l == list
        {
            *n += 1;
        }
    }

    /// Suspends, resumes or revokes a licence; only its issuer may.
    pub fn change_status(
        &self,
        id: &str,
        by: &Uscc,
        action: Lifecycle,
        reason: &str,
    ) -> Result<LicenceRecord, ServiceError> {
        let licence = self.svc.licence(id)?;
        if &licence.issuer != by {
            return Err(ServiceError::Forbidden(
                "only the licence's issuer may change its status".into(),
            ));
        }
        let reason = required_reason(reason)?;
        let next = match (action, licence.status) {
            (Lifecycle::Suspend, LicenceStatus::Valid) => LicenceStatus::Suspended,
            (Lifecycle::Resume, LicenceStatus::Suspended) => LicenceStatus::Valid,
            (Lifecycle::Revoke, LicenceStatus::Valid | LicenceStatus::Suspended) => {
                LicenceStatus::Revoked
            }
            (_, current) => {
                return Err(ServiceError::Conflict(format!(
                    "a {} licence cannot be {}",
                    current.as_str(),
                    match action {
                        Lifecycle::Suspend => "suspended",
                        Lifecycle::Resume => "resumed",
                        Lifecycle::Revoke => "revoked",
                    }
                )));
            }
        };
        self.svc.store
            .set_status(licence.id.as_str(), licence.status, next, Some(reason))
            .map_err(|e| match e {
                StoreError::Conflict(_) => ServiceError::Conflict(
                    "the licence changed meanwhile (another status change or a renewal); read it again".into(),
                ),
                other => other.into(),
            })?;
        self.svc.licence(id)
    }

    /// Renews a licence: a new identifier (next version) linked to the old one, which is
    /// revoked as replaced. Fields default to the old licence's.
    pub fn renew(
        &self,
        id: &str,
        by: &Uscc,
        fields: Option<Map<String, Value>>,
        valid_until: Option<i64>,
        now: i64,
    ) -> Result<LicenceRecord, ServiceError> {
        let old = self.svc.licence(id)?;
        if &old.issuer != by {
            return Err(ServiceError::Forbidden(
                "only the licence's issuer may renew it".into(),
            ));
        }
        if old.status != LicenceStatus::Valid {
            return Err(ServiceError::Conflict(format!(
                "a {} licence cannot be renewed; only a valid one can",
                old.status.as_str()
            )));
        }
        let holder_name = sdjwt::select(&old.sd_jwt, &|n| n == "holder_name")
            .ok()
            .and_then(|p| disclosed_value(&p, "holder_name"))
            .unwrap_or_default();
        let req = IssueRequest {
            licence_type: old.type_code.to_string(),
            holder_id: old.holder.to_string(),
            holder_name,
            seal_id: old.seal_id.clone(),
            fields: fields.unwrap_or_else(|| old.fields.clone()),
            valid_from: Some(now),
            valid_until,
            serial: None,
        };
        self.issue_inner(by, &req, Some(&old), now)
    }

    /// The signed status list `n` (`statuslist+jwt`).
    pub fn status_list_token(&self, n: u32, now: i64) -> Result<String, ServiceError> {
        let entries = self.svc.store.status_entries(n)?;
        if entries.is_empty() && n > 0 && self.svc.store.status_list_len(n - 1)? < STATUS_LIST_FILL
        {
            return Err(ServiceError::NotFound(format!("status list {n}")));
        }
        let mut list = StatusList::new(STATUS_LIST_ENTRIES as usize)
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        for (idx, status) in entries {
            let s = match status {
                LicenceStatus::Valid => Status::Valid,
                LicenceStatus::Revoked => Status::Revoked,
                LicenceStatus::Suspended => Status::Suspended,
            };
            list.set(idx as usize, s)
                .map_err(|e| ServiceError::Internal(e.to_string()))?;
        }
        let payload = status_list::status_list_payload(
            &format!("{}/{n}", self.svc.status_uri_base),
            now,
            now + 2 * STATUS_LIST_TTL,
            STATUS_LIST_TTL,
            &list,
        );
        self.svc
            .sign_gateway_jwt(status_list::STATUS_LIST_TYP, &payload)
    }
}
