package crawl2clip.deploy;

import java.io.File;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.StandardCopyOption;
import java.util.HashMap;
import java.util.Map;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.hdfs.HdfsConfiguration;
import org.apache.hadoop.hdfs.MiniDFSCluster;

/**
 * A NameNode and one DataNode in this JVM (Hadoop's MiniDFSCluster), with WebHDFS, every port
 * fixed and bound to one address, for deploy/cluster.sh. Data stays under --dir between runs.
 *
 * <p>Flags (all required): --dir DIR --host ADDR --namenode-port N --http-port N
 * --datanode-port N --datanode-http-port N --datanode-ipc-port N --ready-file FILE
 *
 * <p>When both nodes are up and the NameNode has left safe mode it writes --ready-file
 * ("key=value" lines) and prints "HDFS ready"; it runs until SIGTERM.
 */
public final class LocalHdfs {
  public static void main(String[] argv) throws Exception {
    Map<String, String> args = parse(argv);
    File dir = new File(args.get("dir")).getAbsoluteFile();
    String host = args.get("host");
    // MiniDFSCluster formats only when asked; keep the namespace of an earlier run.
    File formatted = new File(dir, "formatted");
    boolean format = !formatted.exists();

    Configuration conf = new HdfsConfiguration();
    conf.set(MiniDFSCluster.HDFS_MINIDFS_BASEDIR, dir.getPath());
    conf.set("hadoop.tmp.dir", new File(dir, "tmp").getPath());
    // One machine, one user: no permission checks, so any --hdfs_user may read and write.
    conf.setBoolean("dfs.permissions.enabled", false);
    conf.setBoolean("dfs.webhdfs.enabled", true);
    conf.setInt("dfs.replication", 1);
    // WebHDFS redirects reads and writes to the DataNode under the name it registered with:
    // make that name the address it listens on, not this machine's hostname.
    conf.set("dfs.datanode.hostname", host);
    conf.set("dfs.datanode.address", host + ":" + args.get("datanode-port"));
    conf.set("dfs.datanode.http.address", host + ":" + args.get("datanode-http-port"));
    conf.set("dfs.datanode.ipc.address", host + ":" + args.get("datanode-ipc-port"));
    conf.set("dfs.namenode.rpc-bind-host", host);
    conf.set("dfs.namenode.http-bind-host", host);
    conf.setInt("dfs.namenode.handler.count", 4);
    conf.setInt("dfs.datanode.handler.count", 2);

    MiniDFSCluster cluster =
        new MiniDFSCluster.Builder(conf, dir)
            .nameNodePort(Integer.parseInt(args.get("namenode-port")))
            .nameNodeHttpPort(Integer.parseInt(args.get("http-port")))
            .numDataNodes(1)
            .checkDataNodeAddrConfig(true) // keep the DataNode ports set above
            .checkDataNodeHostConfig(true) // and its hostname
            .format(format)
            .checkExitOnShutdown(false)
            .build();
    cluster.waitActive(); // the DataNode registered, the NameNode out of safe mode
    if (format) {
      Files.createFile(formatted.toPath());
    }

    String ready =
        "namenode=hdfs://" + host + ":" + cluster.getNameNodePort() + "\n"
            + "webhdfs=http://" + host + ":" + cluster.getNameNode().getHttpAddress().getPort()
            + "\n"
            + "datanode_http=http://" + host + ":" + cluster.getDataNodes().get(0).getInfoPort()
            + "\n";
    File readyFile = new File(args.get("ready-file"));
    File partial = new File(readyFile.getPath() + ".tmp");
    Files.write(partial.toPath(), ready.getBytes(StandardCharsets.UTF_8));
    Files.move(partial.toPath(), readyFile.toPath(), StandardCopyOption.ATOMIC_MOVE);
    System.out.println("HDFS ready\n" + ready);
    System.out.flush();
    Thread.currentThread().join();
  }

  private static Map<String, String> parse(String[] argv) {
    String[] required = {
      "dir", "host", "namenode-port", "http-port", "datanode-port", "datanode-http-port",
      "datanode-ipc-port", "ready-file"
    };
    Map<String, String> args = new HashMap<>();
    for (int i = 0; i + 1 < argv.length; i += 2) {
      if (!argv[i].startsWith("--")) {
        throw new IllegalArgumentException("expected --flag value, got " + argv[i]);
      }
      args.put(argv[i].substring(2), argv[i + 1]);
    }
    for (String key : required) {
      if (!args.containsKey(key)) {
        throw new IllegalArgumentException("missing --" + key);
      }
    }
    return args;
  }

  private LocalHdfs() {}
}
