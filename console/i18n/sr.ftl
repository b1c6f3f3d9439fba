# Monitor događaja, srpski (latinica). Svaki natpis konzole dolazi odavde (i iz en.ftl).
app-title = Monitor događaja
nav-overview = Pregled
nav-events = Događaji
nav-dead = Neisporučeni
nav-subscriptions = Pretplate
nav-parked = Zaustavljeni tokovi
signed-in-as = Prijavljeni ste kao { $role }
role-admin = administrator
role-operator = operater
role-reader = čitalac
tenant-label = Zakupac
all-tenants = svi zakupci
sign-out = Odjava
sign-in = Prijava
sign-in-title = Prijava na Monitor događaja
sign-in-help = Koristite svoju PostgreSQL ulogu i lozinku.
username = Korisničko ime
password = Lozinka
language = Jezik
lang-en = English
lang-sr = Srpski

err-login-failed = Pogrešno korisničko ime ili lozinka.
err-login-throttled = Previše pokušaja prijave. Sačekajte minut pa pokušajte ponovo.
err-login-not-allowed = Ova uloga ne može da koristi konzolu: nije član uloga event_bus_reader, event_bus_operator ili event_bus_admin, ili uloga konzole u bazi ne može da deluje kao ona.
err-session-expired = Sesija je istekla. Prijavite se ponovo.
err-forbidden = Nemate pravo na ovu radnju: vašoj ulozi nedostaje ovlašćenje.
err-csrf = Obrazac je zastareo ili krivotvoren. Osvežite stranicu i pokušajte ponovo.
err-not-found = Nije pronađeno: možda pripada drugom zakupcu ili je obrisano po isteku čuvanja.
err-bad-input = Neispravan unos: { $detail }
err-db-down = Baza podataka nije dostupna. Konzola sama pokušava ponovo; stranica se osvežava kada baza proradi.
err-db = Baza podataka je odbila: { $detail }
err-not-uuid = { $what } „{ $value }“ nije UUID
err-not-time = { $what } „{ $value }“ nije datum i vreme
err-too-long = filter { $what } ima { $length } znakova: najviše { $max }
err-status = status „{ $value }“: koristite pending, processing, completed ili failed
err-window = period „{ $value }“: koristite 1h, 24h ili 7d
err-limit = ograničenje mora biti ceo broj
err-from-after-to = „od“ ({ $from }) je posle „do“ ({ $to }): nijedan događaj ne može da odgovara
err-api-two-names = { $first } i { $second } označavaju isto, a razlikuju se: navedite jedno od njih
err-api-limit = ograničenje { $value } je van opsega: navedite od 1 do { $max }
err-api-after-stream = „after“ pripada toku (/api/v1/events/stream); stranice koriste „cursor“
err-api-stream-page = tok ne prima „cursor“ ni „limit“: šalje svaki novi događaj; za nastavak koristite „after“
field-window = period
field-event = događaj
field-subscription = pretplata
field-delivery = isporuka
field-page = stranica
field-tenant = zakupac
field-source = izvorni modul
field-type = tip događaja
field-entity_type = tip entiteta
field-entity_id = id entiteta
field-correlation = korelacija
field-from = od
field-to = do
field-after = posle
err-page-missing = Ta stranica ne postoji.
back = Nazad

overview-title = Pregled
window = Period
window-1h = 1 sat
window-24h = 24 sata
window-7d = 7 dana
count-pending = Na čekanju
count-processing = U obradi
count-completed = Završeno
count-failed = Neuspešno
count-total = Ukupno
chart-title = Pokušaji isporuke
chart-succeeded = uspešni
chart-failed = neuspešni
chart-empty = Nema pokušaja isporuke u ovom periodu.
counted-at = Prebrojano u
queue-depth = Dužina reda (dospelo sada)
oldest-due = Najstarije dospelo
undispatched = Još nije raspoređeno
dead-letters = Neisporučeni
parked-streams = Zaustavljeni tokovi
open-breakers = Otvoreni prekidači
process-pending = Obradi čekajuće sada
process-pending-help = Isporuči najviše ovoliko dospelih događaja odmah, u ovom zahtevu, umesto da se čeka pozadinski proces.
process-pending-done = { $count ->
    [one] Obrađen je { $shown } događaj.
    [few] Obrađena su { $shown } događaja.
   *[other] Obrađeno je { $shown } događaja.
}
seconds = { $n } s
milliseconds = { $n } ms

events-title = Događaji
filter = Filtriraj
filter-clear = Poništi
source-module = Izvorni modul
event-type = Tip događaja
event-type-help = Šablon: * jedna reč, # bilo koliko reči
status = Stanje
any = bilo koje
from = Od
to = Do
entity-type = Tip entiteta
entity-id = ID entiteta
correlation-id = ID korelacije
tenant = Zakupac
created = Nastao
event = Događaj
next-page = Stariji
first-page = Najnoviji
no-events = Nijedan događaj ne odgovara.
live-tail = Uživo
live-pause = Zaustavi
live-resume = Nastavi
live-new = novih: { $shown }

status-pending = na čekanju
status-processing = u obradi
status-completed = završeno
status-failed = neuspešno
status-skipped = preskočeno
status-held = zadržano
status-waiting = čeka
status-closed = zatvoren
status-open = otvoren
status-half_open = poluotvoren

event-title = Događaj { $id }
payload = Sadržaj
metadata = Metapodaci
causation = Uzročnost
parent-event = Roditeljski događaj
child-events = Izazvani događaji
none = nema
deliveries = Isporuke
subscription = Pretplata
handler = Obrađivač
kind = Vrsta
pattern = Šablon
attempts = Pokušaji
next-attempt = Sledeći pokušaj
last-attempt = Poslednji pokušaj
http-status = HTTP kod
error = Greška
completed-at = Završeno
attempt-log = Dnevnik pokušaja
attempt = Pokušaj
duration = Trajanje
response = Odgovor
executed-at = Vreme
no-attempts = Još nema pokušaja.
retry = Ponovi
retry-event-help = Ponovo isporuči neuspele isporuke ovog događaja, sa novim brojem pokušaja.
retried = { $count ->
    [one] Ponovo je pokrenuta { $shown } isporuka.
    [few] Ponovo su pokrenute { $shown } isporuke.
   *[other] Ponovo je pokrenuto { $shown } isporuka.
}
replay = Ponovi slanje
replay-help = Ponovo isporuči ovaj događaj ovoj pretplati.
replayed = { $count ->
    [one] Ponovo je poslata { $shown } isporuka.
    [few] Ponovo su poslate { $shown } isporuke.
   *[other] Ponovo je poslato { $shown } isporuka.
}
skip = Preskoči
skipped = Isporuka je preskočena.

dead-title = Neisporučeni
dead-at = Neisporučeno od
retry-matching = Ponovi sve odgovarajuće
retry-matching-preview = { $count ->
    [one] Ovom filteru odgovara { $shown } neuspela isporuka.
    [few] Ovom filteru odgovaraju { $shown } neuspele isporuke.
   *[other] Ovom filteru odgovara { $shown } neuspelih isporuka.
}
retry-matching-confirm = { $count ->
    [one] Ponovi ovu jednu
    [few] Ponovi ove { $shown }
   *[other] Ponovi ovih { $shown }
}
no-dead = Nema neisporučenih.

subs-title = Pretplate
active = Aktivna
yes = da
no = ne
breaker = Prekidač
consecutive-failures = Uzastopni neuspesi
failures-1h = Neuspesi (1 h)
attempts-1h = Pokušaji (1 h)
last-error = Poslednja greška
last-success = Poslednji uspeh
secret = Tajni ključ za potpis
target = Odredište
reset-breaker = Resetuj prekidač
breaker-reset = { $count ->
    [one] Prekidač je resetovan; oslobođena je { $shown } zadržana isporuka.
    [few] Prekidač je resetovan; oslobođene su { $shown } zadržane isporuke.
   *[other] Prekidač je resetovan; oslobođeno je { $shown } zadržanih isporuka.
}
pause = Pauziraj
resume = Nastavi
paused = Pauzirano.
resumed = Nastavljeno.
no-subs = Nema pretplata.
save = Sačuvaj
sub-filter = Filtar sadržaja
filter-placeholder = npr. $.payload.total > 10000
filter-saved = Filtar je sačuvan.
filter-errors = { $count ->
    [one] { $shown } događaj na kome filtar nije mogao da se izračuna
    [few] { $shown } događaja na kojima filtar nije mogao da se izračuna
   *[other] { $shown } događaja na kojima filtar nije mogao da se izračuna
}
filter-errors-title = Takvi događaji ne dobijaju isporuku (greška se računa kao nepoklapanje). Filtar proverite sa event_bus.matches_filter(filter, event_id).

parked-title = Zaustavljeni tokovi
entity = Entitet
waiting = Čeka
blocking-delivery = Blokirajuća isporuka
parked-at = Zaustavljeno od
no-parked = Nema zaustavljenih tokova.
