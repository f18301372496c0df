# hermes' documented program, as its docs write it (Usage; 4.1 Client; 4.2 Components;
# 4.4 Listeners), with only the imports changed: each original import is the comment
# beside its replacement. Where the docs leave "..." the program says what it does: the
# listener and processor it adds are built with the constructors 4.2 and 4.4 document, and
# execute() re-reads a table (hermes' notifications were wake-ups). The test fills in the
# DSN and watch_path values the docs leave to the reader
# (tests/acceptance/test_hermes_program.py).
from gevent.queue import Queue  # from multiprocessing import Queue

from instances.components import Component  # from hermes.components import Component
from instances.connectors import PostgresConnector  # from hermes.connectors import ...
from instances.listeners import PostgresNotificationListener  # from hermes.listeners ...
from instances.strategies import CommonErrorStrategy  # from hermes.strategies import ...
from supervisor import Client  # from hermes.client import Client


class Processor(Component):
    def __init__(self,):
        super(Processor, self).__init__()

    def execute(self):
        # Do some amazing event-driven stuff
        cursor = reader.pg_cursor
        cursor.execute("SELECT count(*) FROM docs")
        print("docs: %d" % cursor.fetchone()[0], flush=True)


dsn = {'database': 'example_db',
       'host': '127.0.0.1',
       'port': 5432,
       'user': 'example',
       'password': 'example'}

watch_path = '/var/lib/postgresql/9.4/main/'
failover_files = ['recovery.done', 'recovery.conf']

client = Client(dsn, watch_path, failover_files)

# Add processor and listener
reader = PostgresConnector(dsn)
notif_queue = Queue()
error_queue = Queue()
client.add_processor(Processor())
client.add_listener(PostgresNotificationListener(PostgresConnector(dsn), 'doc_changed',
                                                 notif_queue, CommonErrorStrategy(),
                                                 error_queue))

# Start the client
client.start()
