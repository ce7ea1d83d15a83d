import PTQCLI

@main
enum PTQMain {
    static func main() {
        PTQCommand.main()
    }
}
