//! Statements prepared once per backend and kept (SPI_keepplan): the worker's claim and record
//! statements, and emit's INSERT. Their plans do not depend on the arguments, and the plan cache
//! re-plans them by itself after DDL on the tables they read.

use pgrx::prelude::*;
use std::collections::HashMap;

thread_local! {
    /// The kept plans of this backend, by statement name.
    static PLANS: std::cell::RefCell<HashMap<&'static str, pgrx::spi::OwnedPreparedStatement>> =
        std::cell::RefCell::new(HashMap::new());
}

/// Execute the statement `name` (prepared from `sql()` with parameter `types` on first use). The text
/// names delivery states by marker (`<processing>`, `<claimable>`: event_bus_core::lifecycle::sql).
pub fn exec<'conn>(
    client: &mut pgrx::spi::SpiClient<'conn>,
    name: &'static str,
    sql: impl FnOnce() -> String,
    types: &[pg_sys::Oid],
    args: &[pgrx::datum::DatumWithOid],
) -> Result<pgrx::spi::SpiTupleTable<'conn>, pgrx::spi::Error> {
    PLANS.with(|plans| {
        let mut plans = plans.borrow_mut();
        let stmt = match plans.entry(name) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let oids: Vec<pgrx::PgOid> = types.iter().map(|t| pgrx::PgOid::from(*t)).collect();
                let text = event_bus_core::lifecycle::sql(&sql());
                e.insert(client.prepare_mut(text.as_str(), &oids)?.keep())
            }
        };
        client.update(&*stmt, None, args)
    })
}
