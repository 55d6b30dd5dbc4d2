//! Azure Device Update's limits, in one place: the manifest validator, the import pipeline and
//! the embedded service all read them from here (sources: `../shared/reference/adu.md` §7.1,
//! the official import-manifest schema and the REST specification).

/// Most payload files in one update (not adjustable).
pub const MAX_FILES: usize = 10;
/// Most related files per payload file.
pub const MAX_RELATED_FILES: usize = 4;
/// Largest single file, and largest sum of all files of one update: 2 GB, as the official
/// schema spells it (`sizeInBytes` maximum 2147483648).
pub const MAX_TOTAL_BYTES: u64 = 2_147_483_648;
/// Largest single file (the same 2 GB).
pub const MAX_FILE_BYTES: u64 = MAX_TOTAL_BYTES;
/// Most steps in one update.
pub const MAX_STEPS: usize = 10;
/// Most updates in one import request: a parent and at most 10 children.
pub const MAX_IMPORT_ITEMS: usize = 11;
/// Most file URLs one import item may list.
pub const MAX_REQUEST_FILES: usize = 10;
/// Most import or delete operations running at once in one instance.
pub const MAX_RUNNING_OPERATIONS: usize = 10;
/// Updates per instance (Standard SKU).
pub const UPDATES_PER_INSTANCE: usize = 100;
/// Providers per instance.
pub const PROVIDERS_PER_INSTANCE: usize = 25;
/// Names per provider.
pub const NAMES_PER_PROVIDER: usize = 25;
/// Versions per provider and name.
pub const VERSIONS_PER_NAME: usize = 100;
/// Largest import manifest the embedded service fetches (ADU documents none; 2 MiB is far
/// above any real manifest).
pub const MANIFEST_BYTES: u64 = 2 << 20;
/// Longest URL an import request may give (Azure's blob URLs with a SAS are well under 2,048
/// characters); longer ones are refused before anything is stored.
pub const MAX_URL_CHARS: usize = 4096;
/// Largest import request body the embedded service reads (11 updates of 11 URLs each at the
/// longest URL are under 0.5 MiB).
pub const MAX_IMPORT_REQUEST_BYTES: usize = 1 << 20;
/// Finished operations the embedded service keeps at most, newest first (ADU keeps them for
/// a while, then drops them).
pub const KEPT_OPERATIONS: usize = 1000;
/// Days a finished operation is kept (ADU: 7).
pub const OPERATION_DAYS: u64 = 7;
/// Longest error message stored with an operation, in characters.
pub const ERROR_MESSAGE_CHARS: usize = 2048;
/// Most error details stored with an operation.
pub const ERROR_DETAILS: usize = 100;
/// Longest provider or name of an update id.
pub const ID_PART_CHARS: usize = 64;
/// Longest file name.
pub const FILE_NAME_BYTES: usize = 255;
