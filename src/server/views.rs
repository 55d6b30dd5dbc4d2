//! The Device Update views serve keeps in memory, one per group and one of the whole registry,
//! shared by every request (and by serve's own passes) until a write makes them stale; then
//! brought up to date from what the write changed. What a view holds is `server::devices`'.

use std::sync::Arc;

use super::Shared;
use super::devices::{DEFAULT_GROUP, View};
use super::state::KeptView;
use super::store::StoreError;

/// Views kept by [`view_of`] beyond which stale, unused ones are dropped.
const KEPT_VIEWS: usize = 256;

/// Devices written since a kept view beyond which it is rebuilt rather than brought up to date
/// (each one costs a read by key; a rebuild costs a scan): this many, or a quarter of the
/// view's devices when that is more ([`most_changes_applied`]). A deployment writes every
/// device of its group: 10,000 of a registry of 100,000 are read in a tenth of a rebuild.
const MOST_CHANGES_APPLIED: usize = 4_096;

/// Devices written beyond which a view of `devices` is rebuilt.
fn most_changes_applied(devices: usize) -> usize {
    MOST_CHANGES_APPLIED.max(devices / 4)
}

/// The Device Update view of one group's devices, or of the whole registry. A view is kept
/// until the store is next written (its generation moves). Then, when only some devices'
/// rows were written (the store's change log says which: a device's report, a tag), the
/// kept view is brought up to date by reading those devices alone
/// ([`View::with_changes`]); an import or a deleted update recomputes the best updates from
/// the devices kept ([`View::with_updates`]), a class's name rereads the names; more changes
/// than [`most_changes_applied`], or more than the log keeps, rebuild it from the store. Each
/// view has its own async lock: when many requests need a view that must be brought up to
/// date, one does it and the others wait for that one, so the work and the memory do not grow
/// with the clients.
pub(crate) async fn view_of(s: &Shared, group: Option<&str>) -> Result<Arc<View>, StoreError> {
    let wanted = s.db.generation();
    let slot = {
        let mut views = s.views.lock().unwrap_or_else(|p| p.into_inner());
        if views.len() > KEPT_VIEWS {
            views.retain(|_, v| Arc::strong_count(v) > 1);
        }
        views.entry(group.unwrap_or_default().to_owned()).or_default().clone()
    };
    let mut cached = slot.lock().await;
    if let Some(kept) = cached.as_ref()
        && kept.at >= wanted
    {
        return Ok(kept.view.clone());
    }
    // Read the generation and the mark before the rows: a write that lands meanwhile makes
    // the next request look again, never a stale view look current.
    let at = s.db.generation();
    let mark = s.db.change_mark();
    if let Some(kept) = cached.as_mut()
        && let Some(since) = s.db.changes_since(kept.mark)
        && since.devices.len() <= most_changes_applied(kept.view.devices.len())
    {
        let modules_changed = (since.modules || since.updates) && group.is_none();
        if since.devices.is_empty() && !modules_changed && !since.updates && !since.class_names {
            // Nothing this view is made of was written: it is still current.
            kept.at = at;
            kept.mark = mark;
            return Ok(kept.view.clone());
        }
        let (base, updates) = if since.updates {
            // An import: every class's best update again, from the devices kept.
            let updates = Arc::new(s.db.read(|st| st.updates()).await?);
            (Arc::new(kept.view.with_updates(&updates)), updates)
        } else {
            (kept.view.clone(), kept.updates.clone())
        };
        let mut view = if since.devices.is_empty() {
            (*base).clone()
        } else {
            let ids: Vec<String> = since.devices.into_iter().collect();
            let mut rows = s.db.read(move |st| st.registered(&ids)).await?;
            if let Some(g) = group {
                // A device that left the group is no longer in its view.
                for (_, row) in &mut rows {
                    if row.as_ref().is_some_and(|r| r.twin.group().unwrap_or(DEFAULT_GROUP) != g) {
                        *row = None;
                    }
                }
            }
            base.with_changes(&rows, &updates)
        };
        if since.class_names || view.classes.keys().any(|c| !kept.view.classes.contains_key(c)) {
            let names = s.db.read(|st| st.class_names()).await?;
            for (id, class) in &mut view.classes {
                class.friendly_name = names.get(id).cloned();
            }
        }
        if modules_changed {
            let modules = s.db.read(|st| st.module_agents()).await?;
            view.modules = View::build(&modules, &updates).devices;
        }
        let view = Arc::new(view);
        *kept = KeptView { at, mark, updates, view: view.clone() };
        return Ok(view);
    }
    let g = group.map(str::to_owned);
    let twins = s.db.read(move |st| st.registry_twins(g.as_deref())).await?;
    let updates = Arc::new(s.db.read(|st| st.updates()).await?);
    let names = s.db.read(|st| st.class_names()).await?;
    let mut view = View::build_registered(&twins, &updates);
    if group.is_none() {
        let modules = s.db.read(|st| st.module_agents()).await?;
        view.modules = View::build(&modules, &updates).devices;
    }
    for (id, class) in &mut view.classes {
        class.friendly_name = names.get(id).cloned();
    }
    let view = Arc::new(view);
    *cached = Some(KeptView { at, mark, updates, view: view.clone() });
    Ok(view)
}
