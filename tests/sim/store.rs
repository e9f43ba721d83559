//! A simulated process's connection to the store: delays, faults, freezes.

use super::*;

/// How a process's requests reach the store.
#[derive(Debug, Clone, Copy)]
pub struct Network {
    /// Percent of requests failed with a 503 before they reach the store.
    pub unavailable: u64,
    /// Percent of answers lost after the store applied the request.
    pub lost: u64,
    /// Percent of answers held up to a minute on their way back (or of
    /// 503s, before they come). A request itself lands within 200 ms of
    /// leaving or never: the settle time of a takeover and the send window
    /// of a delete (docs/protocol.md) are sized on that bound.
    pub slow: u64,
}

pub(super) const FAULTY: Network = Network {
    unavailable: 2,
    lost: 2,
    slow: 5,
};
pub(super) const CLEAN: Network = Network {
    unavailable: 0,
    lost: 0,
    slow: 0,
};

/// A process's connection to the store.
#[derive(Debug)]
pub struct SimStore {
    pub(super) world: Arc<Mutex<World>>,
    pub(super) process: Arc<Process>,
    pub(super) network: Network,
    pub(super) rng: Mutex<Rng>,
}

impl SimStore {
    pub(super) fn delay(&self, slow_allowed: bool) -> Duration {
        let mut rng = self.rng.lock().unwrap();
        let ms = if slow_allowed && rng.chance(self.network.slow) {
            rng.between(1_000, 60_000)
        } else {
            rng.between(1, 200)
        };
        Duration::from_millis(ms)
    }

    pub(super) async fn thawed(&self) {
        let mut frozen = self.process.frozen.subscribe();
        while *frozen.borrow_and_update() {
            if frozen.changed().await.is_err() {
                return;
            }
        }
    }

    /// Send `op` to the store: it lands after a delay even if this process
    /// is frozen or killed meanwhile; the answer comes back later, to a
    /// thawed process, or is lost.
    pub(super) async fn request<T: Send + 'static>(
        &self,
        what: &'static str,
        op: impl FnOnce(&mut World, &str) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.thawed().await;
        let unavailable = self.rng.lock().unwrap().chance(self.network.unavailable);
        let on_the_way = self.delay(false);
        if unavailable {
            tokio::time::sleep(self.delay(true)).await;
            return Err(Error::store(format!("{what}: 503 Service Unavailable")));
        }
        let (world, name) = (self.world.clone(), self.process.name.clone());
        let landed = tokio::spawn(async move {
            tokio::time::sleep(on_the_way).await;
            op(&mut world.lock().unwrap(), &name)
        });
        let answer = landed.await.expect("a request never panics");
        tokio::time::sleep(self.delay(true)).await;
        self.thawed().await;
        if self.rng.lock().unwrap().chance(self.network.lost) {
            return Err(Error::store(format!("{what}: connection reset")));
        }
        answer
    }
}

pub(super) fn info(o: &Object) -> ObjectInfo {
    ObjectInfo {
        size: o.body.len() as u64,
        metadata: o.metadata.clone(),
        website_redirect: o.redirect.clone(),
    }
}

#[async_trait]
impl Store for SimStore {
    fn describe(&self) -> String {
        "simulated store".into()
    }

    async fn preflight(&self) -> Result<()> {
        self.request("preflight", |_, _| Ok(())).await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let key = key.to_string();
        self.request("HEAD", move |w, _| Ok(w.objects.get(&key).map(info)))
            .await
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let key = key.to_string();
        self.request("GET", move |w, _| {
            Ok(w.objects.get(&key).map(|o| o.body.clone()))
        })
        .await
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Option<Segments>> {
        let key = key.to_string();
        self.request("GET range", move |w, _| {
            Ok(w.objects.get(&key).map(|o| {
                let from = (offset as usize).min(o.body.len());
                let to = (offset.saturating_add(len) as usize).min(o.body.len());
                Segments::from(o.body.slice(from..to))
            }))
        })
        .await
    }

    async fn put(
        &self,
        key: &str,
        body: Bytes,
        metadata: &Metadata,
        mode: PutMode,
    ) -> Result<Created> {
        let (key, metadata) = (key.to_string(), metadata.clone());
        self.request("PUT", move |w, who| {
            if mode == PutMode::Create && w.objects.contains_key(&key) {
                return Ok(Created::AlreadyExists);
            }
            let modified = w.now_secs();
            let object = Object {
                body,
                metadata,
                redirect: None,
                modified,
            };
            w.objects.insert(key.clone(), object);
            w.wrote(who, "put", &key);
            Ok(Created::Yes)
        })
        .await
    }

    async fn put_link_if_absent(&self, link: &Link, metadata: &Metadata) -> Result<Created> {
        let (link, metadata) = (link.clone(), metadata.clone());
        self.request("PUT link", move |w, who| {
            if w.objects.contains_key(&link.key) {
                return Ok(Created::AlreadyExists);
            }
            let modified = w.now_secs();
            let object = Object {
                body: Bytes::from(link.body.clone()),
                metadata,
                redirect: link.redirect.clone(),
                modified,
            };
            w.objects.insert(link.key.clone(), object);
            w.wrote(who, "link", &link.key);
            Ok(Created::Yes)
        })
        .await
    }

    /// A frozen process's request with a deadline leaves once it is
    /// thawed, and the deadline is checked then, as in the product.
    async fn about_to_send(&self) {
        self.thawed().await;
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let key = key.to_string();
        self.request("DELETE", move |w, who| {
            if w.objects.remove(&key).is_some() {
                w.wrote(who, "delete", &key);
            }
            Ok(())
        })
        .await
    }

    async fn list_dir(&self, prefix: &str, recursive: bool) -> Result<Listing> {
        let prefix = prefix.to_string();
        self.request("LIST", move |w, _| {
            let mut listing = Listing::default();
            for (key, o) in w.objects.range(prefix.clone()..) {
                let Some(rest) = key.strip_prefix(&prefix) else {
                    break;
                };
                match rest.split_once('/') {
                    Some((dir, _)) if !recursive => {
                        let dir = format!("{prefix}{dir}/");
                        if listing.prefixes.last() != Some(&dir) {
                            listing.prefixes.push(dir);
                        }
                    }
                    _ => listing.objects.push(ObjectMeta {
                        key: key.clone(),
                        size: o.body.len() as u64,
                        last_modified: Some(o.modified),
                        md5: Some(md5_hex(&o.body)),
                    }),
                }
            }
            Ok(listing)
        })
        .await
    }

    async fn create_upload(&self, key: &str, metadata: &Metadata) -> Result<String> {
        let (key, metadata) = (key.to_string(), metadata.clone());
        self.request("CreateMultipartUpload", move |w, who| {
            w.next_upload += 1;
            let id = format!("upload-{}", w.next_upload);
            let initiated = w.now_secs();
            w.staged.insert(
                id.clone(),
                Staged {
                    key: key.clone(),
                    metadata,
                    parts: BTreeMap::new(),
                    initiated,
                },
            );
            w.wrote(who, "stage", &key);
            Ok(id)
        })
        .await
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        data: Bytes,
    ) -> Result<UploadedPart> {
        let (key, id) = (key.to_string(), upload_id.to_string());
        self.request("UploadPart", move |w, _| {
            let received_at = Some(w.now_secs());
            let staged = w
                .staged
                .get_mut(&id)
                .filter(|s| s.key == key)
                .ok_or_else(|| Error::store("NoSuchUpload"))?;
            staged.parts.insert(number, data.clone());
            Ok(UploadedPart {
                number,
                size: data.len() as u64,
                md5: md5_hex(&data),
                received_at,
            })
        })
        .await
    }

    async fn list_parts(&self, key: &str, upload_id: &str) -> Result<Option<Vec<UploadedPart>>> {
        let (key, id) = (key.to_string(), upload_id.to_string());
        self.request("ListParts", move |w, _| {
            Ok(w.staged.get(&id).filter(|s| s.key == key).map(|s| {
                s.parts
                    .iter()
                    .map(|(&number, data)| UploadedPart {
                        number,
                        size: data.len() as u64,
                        md5: md5_hex(data),
                        received_at: Some(s.initiated),
                    })
                    .collect()
            }))
        })
        .await
    }

    async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
    ) -> Result<()> {
        let (key, id, parts) = (key.to_string(), upload_id.to_string(), parts.to_vec());
        self.request("CompleteMultipartUpload", move |w, who| {
            let staged = w
                .staged
                .get(&id)
                .filter(|s| s.key == key)
                .ok_or_else(|| Error::store("NoSuchUpload"))?;
            let mut body = Vec::new();
            for part in &parts {
                let data = staged
                    .parts
                    .get(&part.number)
                    .filter(|d| md5_hex(d) == part.md5)
                    .ok_or_else(|| Error::store("InvalidPart"))?;
                body.extend_from_slice(data);
            }
            let staged = w.staged.remove(&id).expect("found above");
            let modified = w.now_secs();
            let object = Object {
                body: body.into(),
                metadata: staged.metadata,
                redirect: None,
                modified,
            };
            w.objects.insert(key.clone(), object);
            w.wrote(who, "complete", &key);
            Ok(())
        })
        .await
    }

    async fn abort_upload(&self, _key: &str, upload_id: &str) -> Result<()> {
        let id = upload_id.to_string();
        self.request("AbortMultipartUpload", move |w, who| {
            if let Some(staged) = w.staged.remove(&id) {
                w.wrote(who, "abort", &staged.key);
            }
            Ok(())
        })
        .await
    }

    async fn list_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>> {
        let prefix = prefix.to_string();
        self.request("ListMultipartUploads", move |w, _| {
            Ok(w.staged
                .iter()
                .filter(|(_, s)| s.key.starts_with(&prefix))
                .map(|(id, s)| PendingUpload {
                    key: s.key.clone(),
                    upload_id: id.clone(),
                    initiated: Some(s.initiated),
                })
                .collect())
        })
        .await
    }
}
