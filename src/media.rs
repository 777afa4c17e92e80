//! Media files on local disk, content-addressed: an upload streams into a temporary file while
//! it is hashed (never held in memory), then moves to `blobs/{hash[0..2]}/{hash}`; the same
//! content uploaded twice is stored once. Clients only ever see random media ids (the `media`
//! table maps them to hashes), never the hash.
//!
//! Thumbnails are made on first request in a blocking thread, with decoder limits so an image
//! that claims enormous dimensions (a decompression bomb) fails cleanly, and a few decodes at a
//! time (see [`Thumbnails`]): memory for decoding stays under decodes x pixels x 4 bytes.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ring::digest;
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

/// Bytes kept from the start of an upload to sniff its type.
const SNIFF: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("larger than {0} bytes")]
    TooLarge(u64),
    #[error("not an image this server can read")]
    NotAnImage,
    #[error("the image is too large to decode")]
    TooManyPixels,
    #[error(transparent)]
    Io(#[from] io::Error),
}

pub struct MediaStore {
    root: PathBuf,
}

/// How thumbnails are made: at most `px` on the longer side, only of images of at most
/// `max_pixels` (read from the header, before decoding), and at most so many decodes at once.
/// Decodes beyond that wait their turn: a waiting request holds no image memory.
pub struct Thumbnails {
    px: u32,
    max_pixels: u64,
    decodes: Arc<Semaphore>,
}

impl Thumbnails {
    pub fn new(px: u32, max_pixels: u64, max_concurrent_decodes: usize) -> Thumbnails {
        Thumbnails {
            px,
            max_pixels,
            decodes: Arc::new(Semaphore::new(max_concurrent_decodes.max(1))),
        }
    }
}

/// An upload in progress. Dropped before [`MediaStore::finish`] completes (an error, a client
/// gone mid-body, a cancelled request), it removes its temporary file.
pub struct Upload {
    file: tokio::fs::File,
    path: PathBuf,
    finished: bool,
    hasher: digest::Context,
    size: u64,
    limit: u64,
    head: Vec<u8>,
}

/// A finished upload.
pub struct Stored {
    pub hash: String,
    pub size: u64,
    /// The type sniffed from the bytes (the client's Content-Type is not trusted).
    pub mime: String,
    /// Whether this upload put the blob there (rather than finding the same content stored):
    /// only then may a failure to record it remove it.
    pub created: bool,
}

impl MediaStore {
    pub fn new(root: &Path) -> io::Result<MediaStore> {
        std::fs::create_dir_all(root.join("tmp"))?;
        std::fs::create_dir_all(root.join("blobs"))?;
        // Leftovers of uploads interrupted by a crash.
        for entry in std::fs::read_dir(root.join("tmp"))?.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
        Ok(MediaStore {
            root: root.to_path_buf(),
        })
    }

    pub async fn begin(&self, limit: u64) -> io::Result<Upload> {
        let path = self.root.join("tmp").join(crate::ids::random_hex(16));
        let file = tokio::fs::File::create(&path).await?;
        Ok(Upload {
            file,
            path,
            finished: false,
            hasher: digest::Context::new(&digest::SHA256),
            size: 0,
            limit,
            head: Vec::new(),
        })
    }

    /// Completes an upload: flushes, names it by its hash, and sniffs its type.
    pub async fn finish(&self, mut upload: Upload) -> Result<Stored, MediaError> {
        upload.file.flush().await?;
        upload.file.sync_all().await?;
        let hash: String = upload
            .hasher
            .clone()
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let target = self.blob_path(&hash);
        if let Some(dir) = target.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let created = !tokio::fs::try_exists(&target).await?;
        if created {
            tokio::fs::rename(&upload.path, &target).await?;
        } else {
            tokio::fs::remove_file(&upload.path).await?;
        }
        upload.finished = true;
        let mime = infer::get(&upload.head)
            .map(|t| t.mime_type().to_string())
            .unwrap_or_else(|| {
                if std::str::from_utf8(&upload.head).is_ok() {
                    "text/plain".to_string()
                } else {
                    "application/octet-stream".to_string()
                }
            });
        Ok(Stored {
            hash,
            size: upload.size,
            mime,
            created,
        })
    }

    pub fn blob_path(&self, hash: &str) -> PathBuf {
        self.root
            .join("blobs")
            .join(hash.get(..2).unwrap_or("00"))
            .join(hash)
    }

    fn thumb_path(&self, hash: &str, px: u32) -> PathBuf {
        self.blob_path(hash)
            .with_extension(format!("thumb{px}.png"))
    }

    /// The thumbnail of an image (PNG), made once and kept.
    pub async fn thumbnail(&self, hash: &str, how: &Thumbnails) -> Result<PathBuf, MediaError> {
        let thumb = self.thumb_path(hash, how.px);
        if tokio::fs::try_exists(&thumb).await? {
            return Ok(thumb);
        }
        let permit = how
            .decodes
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| MediaError::NotAnImage)?;
        // Another request may have made it while this one waited.
        if tokio::fs::try_exists(&thumb).await? {
            return Ok(thumb);
        }
        let (source, out, px, max_pixels) =
            (self.blob_path(hash), thumb.clone(), how.px, how.max_pixels);
        tokio::task::spawn_blocking(move || {
            // Held by the decode itself, so a request that goes away does not free its slot
            // while the decode still runs.
            let _permit = permit;
            make_thumbnail(&source, &out, px, max_pixels)
        })
        .await
        .map_err(|_| MediaError::NotAnImage)??;
        Ok(thumb)
    }

    /// Deletes a blob and its thumbnails.
    pub async fn remove(&self, hash: &str) {
        let blob = self.blob_path(hash);
        let _ = tokio::fs::remove_file(&blob).await;
        if let (Some(dir), Some(name)) = (blob.parent(), blob.file_name()) {
            if let Ok(mut entries) = tokio::fs::read_dir(dir).await {
                let prefix = format!("{}.thumb", name.to_string_lossy());
                while let Ok(Some(e)) = entries.next_entry().await {
                    if e.file_name().to_string_lossy().starts_with(&prefix) {
                        let _ = tokio::fs::remove_file(e.path()).await;
                    }
                }
            }
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.finished {
            // A blocking unlink in async code, but one syscall on a local file: cheaper than a
            // task, and it cannot be skipped by a runtime shutting down.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Upload {
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), MediaError> {
        self.size += chunk.len() as u64;
        if self.size > self.limit {
            return Err(MediaError::TooLarge(self.limit));
        }
        if self.head.len() < SNIFF {
            let take = (SNIFF - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..take]);
        }
        self.hasher.update(chunk);
        self.file.write_all(chunk).await?;
        Ok(())
    }
}

fn make_thumbnail(source: &Path, out: &Path, px: u32, max_pixels: u64) -> Result<(), MediaError> {
    let mut reader = image::ImageReader::open(source)?
        .with_guessed_format()
        .map_err(MediaError::Io)?;
    // Refuse before decoding: dimensions come from the header, memory is bounded by the limits.
    let (w, h) = reader
        .into_dimensions()
        .map_err(|_| MediaError::NotAnImage)?;
    if u64::from(w) * u64::from(h) > max_pixels {
        return Err(MediaError::TooManyPixels);
    }
    reader = image::ImageReader::open(source)?
        .with_guessed_format()
        .map_err(MediaError::Io)?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    limits.max_alloc = Some(max_pixels.saturating_mul(4));
    reader.limits(limits);
    let image = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => MediaError::TooManyPixels,
        _ => MediaError::NotAnImage,
    })?;
    // Its own temporary name: two decodes of the same image may run at once.
    let tmp = out.with_extension(format!("{}.tmp", crate::ids::random_hex(8)));
    let saved = image
        .thumbnail(px, px)
        .save_with_format(&tmp, image::ImageFormat::Png);
    if saved.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return Err(MediaError::NotAnImage);
    }
    std::fs::rename(tmp, out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp_files(root: &Path) -> usize {
        std::fs::read_dir(root.join("tmp")).unwrap().count()
    }

    /// A PNG of `w`×`h` pixels in the store; returns its hash.
    async fn stored_png(store: &MediaStore, w: u32, h: u32) -> String {
        let mut bytes = std::io::Cursor::new(Vec::new());
        image::RgbImage::new(w, h)
            .write_to(&mut bytes, image::ImageFormat::Png)
            .unwrap();
        let mut upload = store.begin(u64::MAX).await.unwrap();
        upload.write(bytes.get_ref()).await.unwrap();
        store.finish(upload).await.unwrap().hash
    }

    #[tokio::test]
    async fn a_decode_waits_for_a_free_slot() {
        let dir = tempfile::tempdir().unwrap();
        let store = MediaStore::new(dir.path()).unwrap();
        let hash = stored_png(&store, 64, 48).await;
        let how = Thumbnails::new(16, 10_000, 1);
        let busy = how.decodes.clone().acquire_owned().await.unwrap();
        let waiting = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            store.thumbnail(&hash, &how),
        );
        assert!(
            waiting.await.is_err(),
            "no decode while the only slot is taken"
        );
        drop(busy);
        let thumb = store.thumbnail(&hash, &how).await.unwrap();
        assert_eq!(image::image_dimensions(thumb).unwrap(), (16, 12));
        assert_eq!(how.decodes.available_permits(), 1, "the slot is free again");
    }

    #[tokio::test]
    async fn an_unfinished_upload_removes_its_file_and_a_finished_one_says_if_it_is_new() {
        let dir = tempfile::tempdir().unwrap();
        let store = MediaStore::new(dir.path()).unwrap();
        let mut upload = store.begin(100).await.unwrap();
        upload.write(b"half of it").await.unwrap();
        assert_eq!(tmp_files(dir.path()), 1);
        drop(upload);
        assert_eq!(tmp_files(dir.path()), 0, "dropped unfinished: removed");

        let mut over = store.begin(4).await.unwrap();
        assert!(matches!(
            over.write(b"too long").await,
            Err(MediaError::TooLarge(4))
        ));
        drop(over);
        assert_eq!(tmp_files(dir.path()), 0);

        let mut created = Vec::new();
        for _ in 0..2 {
            let mut upload = store.begin(100).await.unwrap();
            upload.write(b"same bytes").await.unwrap();
            let stored = store.finish(upload).await.unwrap();
            assert!(store.blob_path(&stored.hash).exists());
            created.push(stored.created);
        }
        assert_eq!(created, [true, false], "the second finds the first's blob");
        assert_eq!(tmp_files(dir.path()), 0);
    }
}
